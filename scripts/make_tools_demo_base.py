"""Re-create the tools demo's embedded base model (src/ponder/assets/tools-demo-base) with ponder's SFT.

    .venv/bin/python scripts/make_tools_demo_base.py [--out DIR] [--call-share 0.25] [key=value ...]

Builds the "products" task's character tokenizer (call and output tags as single tokens), a tiny
Qwen3-shaped model (the plain demo's shape), SFT data from the task's *train* split (a
`--call-share` of the examples call the calculator, whatever the kind; the rest answer
directly), trains with configs/tools-demo-base-sft.yaml, and reports the held-out measures of
the result (ponder.demo_tools.measure).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from make_demo_base import sft_base  # the plain demo's model shape and recipe (scripts/ is on the path when run)
from ponder.demo_tools import SFT_CALL_SHARE, TASK, measure, problem_sets
from ponder.tasks import family
from ponder.tokenizer import build_char_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "src/ponder/assets/tools-demo-base"))
    ap.add_argument("--work", default=str(ROOT / "out/tools-demo-base"))
    ap.add_argument("--call-share", type=float, default=SFT_CALL_SHARE)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()

    fam = family(TASK)
    rng = random.Random(0)
    problems, _, held_out = problem_sets()  # held-out problems are never fine-tuned on
    examples = [(p.prompt, fam.sft_text(p, rng.random() < args.call_share)) for p in problems]
    out = Path(args.out)
    summary = sft_base(Path(args.work), build_char_tokenizer(fam.ALPHABET, fam.SPECIAL_TOKENS), 128, args.hidden,
                       examples, ROOT / "configs/tools-demo-base-sft.yaml", args.overrides, out)

    from ponder.models import from_pretrained
    from ponder.tokenizer import Tokenizer

    model = from_pretrained(out)
    print(json.dumps({"sft": {k: summary[k] for k in ("steps", "seconds", "loss")},
                      "held_out": measure(model, Tokenizer.from_pretrained(out), held_out),
                      "parameters": sum(p.numel() for p in model.parameters())}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
