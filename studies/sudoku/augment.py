"""`--augment studies.sudoku.augment:symmetries`: a fresh random symmetry of every training puzzle, every batch.

Rows are the Sudoku character tokenizer's puzzle-then-solution sequences: the puzzle's cells ('0' = blank),
[SEP], the solution's cells, [EOS], padding. Each row gets its own digit relabelling, band/stack and row/column
permutation and transposition (`generate.augment`, the same map on puzzle and solution), so the model sees
new variants throughout training without a larger data file. 4x4 and 9x9 boards alike.
"""

from __future__ import annotations

import numpy as np
import torch

from emdm_models.architectures.sudoku import ZERO_ID

from .generate import augment


def symmetries(input_ids: torch.Tensor, prompt_lengths: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """[b, L] token ids -> the same puzzles under random symmetries (see the module docstring)."""
    cells = prompt_lengths - 1  # the prompt is the puzzle's cells then [SEP]
    n_cells = int(cells[0])
    if bool((cells != n_cells).any()) or n_cells not in (16, 81) or input_ids.shape[1] < 2 * n_cells + 1:
        raise ValueError(f"symmetries expects Sudoku rows of 16 or 81 cells, [SEP], the solution (prompt lengths "
                         f"{sorted(set(cells.tolist()))[:4]}, row length {input_ids.shape[1]})")
    ids = input_ids.numpy()
    side = int(round(n_cells ** 0.5))
    puzzle = ids[:, :n_cells] - ZERO_ID
    solution = ids[:, n_cells + 1: 2 * n_cells + 1] - ZERO_ID
    if puzzle.min() < 0 or puzzle.max() > side or solution.min() < 1 or solution.max() > side:
        raise ValueError("symmetries expects digit tokens in the puzzle (0-n) and the solution (1-n); is the "
                         "tokenizer the Sudoku character tokenizer?")
    rng = np.random.default_rng(int(torch.randint(0, 2 ** 62, (1,), generator=generator)))
    new_puzzle, new_solution = augment(puzzle, solution, rng)
    out = ids.copy()
    out[:, :n_cells] = new_puzzle + ZERO_ID
    out[:, n_cells + 1: 2 * n_cells + 1] = new_solution + ZERO_ID
    return torch.from_numpy(out)
