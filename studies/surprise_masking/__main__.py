"""`python -m studies.surprise_masking ...`: the surprise-masking experiment (see `experiment.py`)."""

import sys

from .experiment import main

sys.exit(main())
