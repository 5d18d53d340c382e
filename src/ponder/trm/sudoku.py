"""6x6 Sudoku (2x3 boxes): a seeded generator of puzzles with one solution, train and held-out
sets that share no solution grid, on-the-fly augmentation, and an exact verifier.

A grid is 36 cells in row-major order, digits 1..6, 0 for a blank. Boxes are 2 rows x 3 columns,
so the grid has 3 bands (pairs of rows) and 2 stacks (triples of columns). 6x6 has 28,200,960
solution grids (4x4 has 288, which a model memorises), the smallest Sudoku on which held-out
puzzles test generalisation.

The difficulty dial is the number of givens: fewer givens, harder puzzles (a minimal 6x6 puzzle has
8 givens at the least; randomly emptied ones stop at about 10-13).
"""

from __future__ import annotations

import numpy as np

SIZE, BOX_ROWS, BOX_COLS = 6, 2, 3
CELLS = SIZE * SIZE
ALL = (1 << SIZE) - 1  # candidate bitmask: bit d-1 set means digit d is possible


def _units() -> list[tuple[int, int, int]]:
    """(row, column, box) of each cell."""
    return [(i // SIZE, i % SIZE, (i // SIZE) // BOX_ROWS * (SIZE // BOX_COLS) + (i % SIZE) // BOX_COLS)
            for i in range(CELLS)]


UNITS = _units()
_BITS = [[d + 1 for d in range(SIZE) if m >> d & 1] for m in range(1 << SIZE)]


def count_solutions(grid, limit: int = 2, rng: np.random.Generator | None = None,
                    out: list | None = None) -> int:
    """Solutions of `grid` (0 = blank), counted up to `limit`. With `rng` the digits are tried in a
    random order (the generator's source of random grids); the first solution found is put in `out`."""
    g = list(grid)
    rows, cols, boxes = [0] * SIZE, [0] * SIZE, [0] * SIZE
    for i, d in enumerate(g):
        if d:
            r, c, b = UNITS[i]
            bit = 1 << (d - 1)
            if (rows[r] | cols[c] | boxes[b]) & bit:
                return 0  # a clash among the givens
            rows[r] |= bit
            cols[c] |= bit
            boxes[b] |= bit
    blanks = [i for i, d in enumerate(g) if not d]
    found = 0

    def search() -> bool:  # True: stop (limit reached)
        nonlocal found
        # the blank with the fewest candidates first (a dead end shows at once)
        best, best_mask, best_n = -1, 0, SIZE + 1
        for i in blanks:
            if g[i]:
                continue
            r, c, b = UNITS[i]
            mask = ALL & ~(rows[r] | cols[c] | boxes[b])
            n = len(_BITS[mask])
            if n < best_n:
                best, best_mask, best_n = i, mask, n
                if n <= 1:
                    break
        if best < 0:
            found += 1
            if out is not None and found == 1:
                out[:] = g
            return found >= limit
        if best_n == 0:
            return False
        digits = _BITS[best_mask]
        if rng is not None:
            digits = [digits[k] for k in rng.permutation(len(digits))]
        r, c, b = UNITS[best]
        for d in digits:
            bit = 1 << (d - 1)
            g[best] = d
            rows[r] |= bit
            cols[c] |= bit
            boxes[b] |= bit
            stop = search()
            rows[r] &= ~bit
            cols[c] &= ~bit
            boxes[b] &= ~bit
            g[best] = 0
            if stop:
                return True
        return False

    search()
    return found


def random_grid(rng: np.random.Generator) -> np.ndarray:
    """A uniformly-shuffled search's first solution of the empty grid: a random solution grid."""
    out: list[int] = []
    count_solutions([0] * CELLS, limit=1, rng=rng, out=out)
    return np.array(out, dtype=np.int8)


def make_puzzle(solution: np.ndarray, givens: int, rng: np.random.Generator) -> np.ndarray | None:
    """Empty cells of `solution` in a random order, keeping the solution unique, until `givens`
    remain; None when no such order reaches that few (a new grid or order is needed)."""
    puzzle = solution.copy()
    left = CELLS
    for i in rng.permutation(CELLS):
        if left == givens:
            break
        keep = puzzle[i]
        puzzle[i] = 0
        if count_solutions(puzzle, limit=2) == 1:
            left -= 1
        else:
            puzzle[i] = keep
    return puzzle if left == givens else None


def generate(count: int, givens: int | tuple[int, int], seed: int | list[int],
             exclude: set[bytes] = frozenset()) -> tuple[np.ndarray, np.ndarray]:
    """`count` puzzles (each with one solution) and their solutions, [count, 36] int8 arrays.
    `givens`: how many digits each puzzle shows, or a (low, high) range drawn uniformly per puzzle.
    Solution grids are all distinct and none is in `exclude` (a set of `grid.tobytes()`)."""
    low, high = (givens, givens) if isinstance(givens, int) else givens
    if not 8 <= low <= high <= CELLS:
        raise ValueError(f"givens must lie in 8..36 (a 6x6 puzzle needs at least 8), got {givens}")
    rng = np.random.default_rng(seed)
    puzzles, solutions, seen = [], [], set(exclude)
    while len(puzzles) < count:
        target = int(rng.integers(low, high + 1))
        solution = random_grid(rng)
        key = solution.tobytes()
        if key in seen:
            continue
        for _ in range(8):  # a few emptying orders per grid before drawing a new one
            puzzle = make_puzzle(solution, target, rng)
            if puzzle is not None:
                puzzles.append(puzzle)
                solutions.append(solution)
                seen.add(key)
                break
    return np.stack(puzzles), np.stack(solutions)


def is_solution(grid) -> bool:
    """Whether `grid` (36 digits) is a complete, valid 6x6 Sudoku grid."""
    g = np.asarray(grid).reshape(SIZE, SIZE)
    want = set(range(1, SIZE + 1))
    boxes = g.reshape(SIZE // BOX_ROWS, BOX_ROWS, SIZE // BOX_COLS, BOX_COLS).transpose(0, 2, 1, 3).reshape(SIZE, SIZE)
    return all(set(line.tolist()) == want for part in (g, g.T, boxes) for line in part)


def verify(puzzle, answer, solution) -> bool:
    """Exact check: right only if every cell is (the puzzle's solution is unique, so this equals
    `answer` being a valid grid that keeps the givens)."""
    return bool(np.array_equal(np.asarray(answer), np.asarray(solution)))


# ---- augmentation -------------------------------------------------------------------------------
# The symmetries of a 6x6 Sudoku with 2x3 boxes: relabel digits; permute the 3 bands and the 2
# rows within each band; permute the 2 stacks and the 3 columns within each stack. Horizontal and
# vertical flips and the 180-degree rotation are such row / column permutations. Transposition is
# not a symmetry here (it makes 2x3 boxes 3x2) and is never applied.

def row_permutation(rng: np.random.Generator) -> np.ndarray:
    """Rows in a new order that keeps bands together (band order and order within bands drawn)."""
    bands = rng.permutation(SIZE // BOX_ROWS)
    return np.concatenate([b * BOX_ROWS + rng.permutation(BOX_ROWS) for b in bands])


def column_permutation(rng: np.random.Generator) -> np.ndarray:
    """Columns in a new order that keeps stacks together."""
    stacks = rng.permutation(SIZE // BOX_COLS)
    return np.concatenate([s * BOX_COLS + rng.permutation(BOX_COLS) for s in stacks])


def cell_permutation(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Flat index map: new cell (r, c) takes old cell (rows[r], cols[c])."""
    return (rows[:, None] * SIZE + cols[None, :]).reshape(-1)


def augment(puzzles: np.ndarray, solutions: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Each (puzzle, solution) row under its own random symmetry (the same one for both);
    blanks stay blank."""
    out_p, out_s = np.empty_like(puzzles), np.empty_like(solutions)
    for k in range(len(puzzles)):
        cells = cell_permutation(row_permutation(rng), column_permutation(rng))
        digits = np.concatenate([[0], 1 + rng.permutation(SIZE)]).astype(puzzles.dtype)
        out_p[k] = digits[puzzles[k][cells]]
        out_s[k] = digits[solutions[k][cells]]
    return out_p, out_s


# Named symmetries, for tests and readers: each is one of the permutations `augment` draws from.
_IDENT = np.arange(SIZE)
NAMED = {
    "swap_bands": (np.array([2, 3, 0, 1, 4, 5]), _IDENT),
    "swap_rows_in_band": (np.array([1, 0, 2, 3, 4, 5]), _IDENT),
    "swap_stacks": (_IDENT, np.array([3, 4, 5, 0, 1, 2])),
    "swap_columns_in_stack": (_IDENT, np.array([2, 1, 0, 3, 4, 5])),
    "flip_vertical": (_IDENT[::-1].copy(), _IDENT),
    "flip_horizontal": (_IDENT, _IDENT[::-1].copy()),
    "rotate_180": (_IDENT[::-1].copy(), _IDENT[::-1].copy()),
}


def apply_named(grid: np.ndarray, name: str) -> np.ndarray:
    rows, cols = NAMED[name]
    return np.asarray(grid)[cell_permutation(rows, cols)]
