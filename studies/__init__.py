"""Studies and examples run with emdm, apart from the library (not part of the wheel; run from a checkout).

- `studies.sudoku`: the Sudoku ordering experiment of Kim et al. 2025 (seed 003): puzzle generator
  (`python -m studies.sudoku.generate`), training recipes (`studies/sudoku/recipes/`), throughput benchmark
  (`python -m studies.sudoku.bench`); the lm-eval task is `tasks/sudoku/` and the model `emdm_models`' Sudoku
  architecture, the embedded checkpoint `emdm:sudoku`.
- `studies.surprise_masking`: does seed 000's surprise-weighted masking help? (`python -m studies.surprise_masking`)
"""
