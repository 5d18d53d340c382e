"""`ponder eval`: load a checkpoint and a task, run the harness, write result.json and result.md.

    ponder eval --model DIR --task multiply --n 8 --k 1,4,8
    ponder eval --model DIR --task math500 --data path/to/math500_test.jsonl --limit 100
    ponder eval --model DIR --task multiply --n 0          # greedy accuracy only

Greedy accuracy is always measured; --n samples per problem at --temperature (default 1.0)
give pass@k and maj@k for each k in --k.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from pathlib import Path

from ponder.evaluate.harness import EvalResult, evaluate, markdown

DEFAULT_TEMPERATURE = 1.0  # sampling temperature for pass@k / maj@k when --temperature is not given
# Options of the inference strategies (ponder.scaling); without --strategy only their defaults.
_STRATEGY_ONLY = {"scorer": "loglik", "rounds": 2}


def write_result(result: EvalResult, out: str | Path, header: dict) -> tuple[Path, Path]:
    """Write result.json (header, settings, grader, metrics, per-problem records) and result.md."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {**header, "settings": result.settings, "grader": result.grader, "metrics": result.metrics,
               "records": result.records}
    json_path, md_path = out / "result.json", out / "result.md"
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n")
    tmp.replace(json_path)
    title = f"{header.get('task', '')} · {header.get('model', '')}"
    md_path.write_text(markdown(result, title=title))
    return json_path, md_path


def main(args) -> int:
    if getattr(args, "strategy", None) is not None and getattr(args, "tool", "none") != "none":
        print("ponder eval: error: --tool/--python-tool works without --strategy", file=sys.stderr)
        return 2
    if getattr(args, "strategy", None) is not None:  # inference-time strategies live in ponder.scaling
        from ponder.scaling.command import main as strategy_main

        return strategy_main(args)
    for name, default in _STRATEGY_ONLY.items():
        if getattr(args, name, default) != default:
            print(f"ponder eval: error: --{name} needs --strategy", file=sys.stderr)
            return 2
    import torch

    from ponder.models import from_pretrained
    from ponder.tasks import load_task
    from ponder.tokenizer import Tokenizer
    from ponder.tools import make_tool

    started = time.time()
    try:
        problems = load_task(args.task, path=args.data, limit=args.limit)
        model = from_pretrained(args.model, dtype=torch.float32)
        tokenizer = Tokenizer.from_pretrained(args.model)
        temperature = DEFAULT_TEMPERATURE if args.temperature is None else args.temperature
        # --n 0: greedy accuracy only (no sampling, so no pass@k / maj@k)
        result = evaluate(model, tokenizer, problems, n=args.n, k_values=args.k if args.n else (),
                          temperature=temperature, max_new_tokens=args.max_new_tokens, seed=args.seed,
                          tool=make_tool(getattr(args, "tool", "none")))
    except (ValueError, FileNotFoundError) as err:  # bad task, data, checkpoint or k/n: say which
        print(f"ponder eval: error: {err}", file=sys.stderr)
        return 2
    header = {"model": str(args.model), "task": args.task, "data": None if args.data is None else str(args.data),
              "limit": args.limit, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "seconds": round(time.time() - started, 2)}
    out = Path(args.out) if args.out else Path("out") / "eval" / args.task.replace(":", "-")
    json_path, md_path = write_result(result, out, header)
    print(md_path.read_text(), end="")
    print(f"wrote {json_path} and {md_path}")
    return 0
