"""Controlled experiments run with emdm, one command each (`python -m emdm_train.experiments.<name> --help`).

- `surprise_masking`: does seed 000's surprise-weighted masking (softmax(S/T), S = -log2 unigram frequency) beat
  uniform MDM masking on held-out likelihood, on high-surprise tokens, and in generated text?
"""
