"""`python -m emdm_models.architectures DIR --size cpu|paper`: write a randomly initialised Sudoku model."""

from .sudoku import main

main()
