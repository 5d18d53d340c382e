"""`ponder verify-study` arguments; light to import (the study loads torch only when it runs)."""

from __future__ import annotations

import re
from pathlib import Path


def field_docs() -> dict[str, str]:
    """Each StudyConfig field's one-line doc, read from the comment beside it in config.py."""
    text = (Path(__file__).parent / "config.py").read_text()
    return {name: doc.replace("%", "%%")  # argparse expands % in help text
            for name, doc in re.findall(r"^    (\w+): [^=]+=[^#]+# (.+)$", text, re.M)}


def add_parser(sub) -> None:
    """The hook ponder.cli calls: one option per StudyConfig size, --out and --json."""
    from ponder.verify.config import StudyConfig

    p = sub.add_parser("verify-study", help="outcome vs process reward vs a learned verifier and meta-verifier "
                                            "on the demo task, with best-of-N and refinement")
    defaults = StudyConfig()
    docs = field_docs()
    for name in StudyConfig.__dataclass_fields__:
        if name in ("out", "seeds", "label_temperatures"):
            continue
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name),
                       help=f"{docs.get(name, '')} (default %(default)s)")
    p.add_argument("--seeds", type=int, nargs="+", default=list(defaults.seeds), help="generator seeds per arm")
    p.add_argument("--label-temperatures", type=float, nargs="+", default=list(defaults.label_temperatures),
                   help=docs["label_temperatures"])
    p.add_argument("--out", default=defaults.out, help="where the study writes (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=lambda a: __import__("ponder.verify.study", fromlist=["main"]).main(a))
