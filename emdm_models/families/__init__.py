"""The model families emdm knows, one adapter module each (importing this package registers them)."""

from . import masked_lm, remote  # noqa: F401  (register the built-in adapters)
