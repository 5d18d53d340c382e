"""`ponder eval`: load a checkpoint and a task, run the harness, write result.json and result.md.

    ponder eval --model DIR --task multiply --n 8 --k 1,4,8
    ponder eval --model DIR --task math500 --data path/to/math500_test.jsonl --limit 100
    ponder eval --model DIR --task multiply --n 0          # greedy accuracy only
    ponder eval --model DIR --task jsonl --data my_dataset --split test --prompt-column question

Greedy accuracy is always measured; --n samples per problem at --temperature (default 1.0)
give pass@k and maj@k for each k in --k. Bad input raises (ValueError, OSError) and `ponder`
reports it as one error line (ponder.cli). With --strategy, ponder.cli runs
ponder.scaling.command instead.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

from ponder.evaluate.harness import EvalResult, evaluate, markdown
from ponder.evaluate.loading import load_model, load_problems

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
    """Entry point of `ponder eval` without --strategy (with it, ponder.cli sends the arguments to
    ponder.scaling.command.main: the strategies live above evaluation, which never imports them)."""
    if getattr(args, "strategy", None) is not None:
        raise ValueError("--strategy runs in ponder.scaling.command.main, not here")
    for name, default in _STRATEGY_ONLY.items():
        if getattr(args, name, default) != default:
            raise ValueError(f"--{name} needs --strategy")
    from ponder.tools import make_tool

    started = time.time()
    problems = load_problems(args)
    model, tokenizer = load_model(args.model, getattr(args, "device", "auto"))
    temperature = DEFAULT_TEMPERATURE if args.temperature is None else args.temperature
    # --n 0: greedy accuracy only (no sampling, so no pass@k / maj@k)
    result = evaluate(model, tokenizer, problems, n=args.n, k_values=args.k if args.n else (),
                      temperature=temperature, max_new_tokens=args.max_new_tokens, seed=args.seed,
                      tool=make_tool(getattr(args, "tool", "none")), chat=getattr(args, "chat", None),
                      instruction=getattr(args, "instruction", None), extract=getattr(args, "extract", "lenient"))
    header = {"model": str(args.model), "task": args.task, "data": None if args.data is None else str(args.data),
              "split": getattr(args, "split", None),
              "limit": args.limit, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "seconds": round(time.time() - started, 2)}
    out = Path(args.out) if args.out else Path("out") / "eval" / args.task.replace(":", "-")
    json_path, md_path = write_result(result, out, header)
    print(md_path.read_text(), end="")
    print(f"wrote {json_path} and {md_path}")
    return 0
