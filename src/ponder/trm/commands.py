"""`ponder trm eval` and `ponder trm compare`: the command-line side of ponder.trm (no torch
imported here, so that building ponder's parser stays instant). `ponder train trm CONFIG.yaml`
is registered with the other trainers in ponder.cli."""

from __future__ import annotations

import argparse


def _ints(text: str) -> list[int]:
    if "-" in text and "," not in text:  # 1-16
        a, b = text.split("-")
        return list(range(int(a), int(b) + 1))
    return [int(x) for x in text.split(",") if x.strip()]


def add_parser(sub) -> None:
    p = sub.add_parser("trm", help="small recursive models (TRM) on 6x6 Sudoku: evaluate a run, or compare "
                                   "a single pass, TRM and HRM's one-step gradient at equal parameters")
    trm = p.add_subparsers(dest="trm", required=True)

    e = trm.add_parser("eval", help="held-out accuracy of a `ponder train trm` run against supervision steps")
    e.add_argument("run", help="the run's output_dir (or its model.pt)")
    e.add_argument("--sup-steps", type=_ints, default=None,
                   help="supervision steps used at inference: a list (1,2,4) or a range (1-16); default: the run's")
    e.add_argument("--halt", action="store_true", help="also let the halting head stop each puzzle (at most the largest --sup-steps)")
    e.add_argument("--puzzles", type=int, default=None, help="first N held-out puzzles (default: all of the run's)")
    e.add_argument("--givens", type=_ints, default=None,
                   help="evaluate on fresh puzzles with these givens (a range like 10-12) instead of the run's held-out set")
    e.add_argument("--raw", action="store_true", help="the trained weights instead of their EMA")
    e.add_argument("--device", default="cpu")
    e.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=lambda a: __import__("ponder.trm.report", fromlist=["eval_main"]).eval_main(a))

    c = trm.add_parser("compare", help="train a single pass, TRM and TRM with the one-step gradient (same net, "
                                       "same data), then table, curves and plots on held-out puzzles")
    c.add_argument("config", help="the TRM run's YAML config; the other variants are derived from it")
    c.add_argument("overrides", nargs="*", help="key=value overrides for every variant")
    c.add_argument("--variants", default="single,trm,one_step",
                   help="comma-separated subset of single, trm, one_step")
    c.add_argument("--max-sup-steps", type=int, default=16, help="the accuracy curve runs 1..N supervision steps")
    c.add_argument("--out", default="out/trm-compare", help="one run folder per variant, compare.json and plots")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=lambda a: __import__("ponder.trm.report", fromlist=["compare_main"]).compare_main(a))
