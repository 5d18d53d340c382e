"""`ponder verify-study` arguments; light to import (the study loads torch only when it runs)."""

from __future__ import annotations


def add_parser(sub) -> None:
    """The hook ponder.cli calls: one option per StudyConfig size, --out and --json."""
    from ponder.verify.config import StudyConfig

    p = sub.add_parser("verify-study", help="outcome vs process reward vs a learned verifier and meta-verifier "
                                            "on the demo task, with best-of-N and refinement")
    defaults = StudyConfig()
    for name, f in StudyConfig.__dataclass_fields__.items():
        if name in ("out", "seeds", "label_temperatures"):
            continue
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    p.add_argument("--seeds", type=int, nargs="+", default=list(defaults.seeds), help="generator seeds per arm")
    p.add_argument("--out", default=defaults.out, help="where the study writes (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=lambda a: __import__("ponder.verify.study", fromlist=["main"]).main(a))
