"""emdm_core: the plumbing every emdm package shares and none owns.

`errors` (one-line error classes), `registry` (the one registry class), `typed` (typed configs: coercion, checks
and argparse flags from dataclass fields), `cli` (one-line errors at every entry point), `launch` (CPU
multi-process relaunch), `seeds`, `devices`, `paths`, and `surprise` (the unigram surprise table a checkpoint
carries, used by training and sampling).

Imported at interpreter start-up by the lm-eval `.pth` hook through `emdm_eval`: keep this `__init__` light.
"""
