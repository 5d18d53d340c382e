"""Small recursive models: a Tiny Recursive Model (TRM) that thinks in a latent loop instead of
in tokens, trained and measured on 6x6 Sudoku.

    sudoku.py    the task: generator (unique solutions, difficulty = givens), held-out split, augmentation, verifier
    model.py     the recursion (T outer steps of n z updates and one y update), halting head
    train.py     TRMConfig and the deep-supervision loop, with checkpoints and exact resume
    report.py    `ponder trm eval` (accuracy against supervision steps) and `ponder trm compare`
    commands.py  the command-line parsers (torch-free)
"""
