"""The Sudoku study (Kim et al. 2025): generator, recipes and benchmark; see `studies/__init__.py`."""
