"""The surprise-masking study (seed 000): `python -m studies.surprise_masking --help`."""
