"""Model classes of emdm's own, registered with transformers' Auto classes on import (safe to import twice)."""

from transformers import AutoConfig, AutoModelForMaskedLM

from .sudoku import SudokuConfig, SudokuForMaskedLM, build_sudoku_tokenizer, save_sudoku_model_dir

AutoConfig.register(SudokuConfig.model_type, SudokuConfig, exist_ok=True)
AutoModelForMaskedLM.register(SudokuConfig, SudokuForMaskedLM, exist_ok=True)

__all__ = ["SudokuConfig", "SudokuForMaskedLM", "build_sudoku_tokenizer", "save_sudoku_model_dir"]
