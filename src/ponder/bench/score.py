"""`ponder bench score`: scoring code completions one at a time against side by side, as the RL
loop scores a step (ponder.rl.scoring.score with a code reward).

The programs are HumanEval-style functions with their tests: from ../shared/data/HumanEval.jsonl.gz
when it is there (the canonical solution, which passes; `return None`, which fails), otherwise
synthesized (`add_i(a, b)` returning a + b + i, or a - b); one program in 32 is a busy loop that
runs until the time limit (--wall-s, CPU limit the same). Every program runs in the sandbox, once
with one worker and once with the pool (one worker per CPU by default). Prints programs per
second for both, their ratio, and whether the rewards agree. Figures, never pass/fail.
"""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "HumanEval.jsonl.gz"
LOOP_EVERY = 32  # one program in this many loops until the time limit
LOOP = "    while True:\n        pass\n"


def programs(count: int, data: Path | None) -> tuple[list, list[str], str]:
    """(problems, completions, where they came from): passing, failing and looping in turn."""
    from ponder.tasks import Problem

    if data is not None and data.is_file():
        with gzip.open(data, "rt", encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        source = f"HumanEval ({data})"
        base = [(Problem(r["task_id"], r["prompt"], "", "code", {"test": r["test"], "entry_point": r["entry_point"]}),
                 r["canonical_solution"], "    return None\n") for r in rows]
    else:
        source = "synthesized add_i(a, b)"
        base = []
        for i in range(164):
            test = f"def check(candidate):\n    assert candidate(2, 3) == {5 + i}\n    assert candidate(-1, 1) == {i}\n"
            base.append((Problem(f"add_{i}", f"def add_{i}(a, b):\n    \"\"\"a + b + {i}\"\"\"\n", "", "code",
                                 {"test": test, "entry_point": f"add_{i}"}),
                         f"    return a + b + {i}\n", "    return a - b\n"))
    problems, completions = [], []
    for j in range(count):
        problem, good, bad = base[j % len(base)]
        problems.append(problem)
        completions.append(LOOP if j % LOOP_EVERY == LOOP_EVERY - 1 else (good if j % 2 == 0 else bad))
    return problems, completions, source


def main(args) -> int:
    from ponder.rewards.code import run_program
    from ponder.rewards.sandbox import Limits
    from ponder.rewards.worker_pool import default_workers
    from ponder.rl.scoring import score

    limits = Limits(wall_s=args.wall_s)

    def code_reward(prompt, completion, problem):
        """1.0 when the program passes its tests: ponder.rewards.code_accuracy with a short clock."""
        result = run_program(problem.prompt + completion, test=problem.meta["test"],
                             entry_point=problem.meta["entry_point"], limits=limits)
        return float(result.correct)

    data = Path(args.data) if args.data else DEFAULT_DATA
    problems, completions, source = programs(args.programs, data)
    prompts = [p.prompt for p in problems]
    workers = args.workers or default_workers()
    score([code_reward], prompts[:2], completions[:2], problems[:2])  # the first run's imports, untimed

    def timed(n_workers: int):
        start = time.perf_counter()
        rewards = score([code_reward], prompts, completions, problems, workers=n_workers)
        return rewards, time.perf_counter() - start

    serial, serial_s = timed(1)
    parallel, parallel_s = timed(workers)
    loops = sum(c == LOOP for c in completions)
    result = {
        "programs": len(completions), "source": source, "wall_s_limit": args.wall_s,
        "passed": int(serial.sum().item()), "looping": loops, "cpus": default_workers(), "workers": workers,
        "serial_programs_per_s": len(completions) / serial_s,
        "parallel_programs_per_s": len(completions) / parallel_s,
        "ratio": serial_s / parallel_s,
        "differing_rewards": int((serial != parallel).sum().item()),
    }
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"{result['programs']} programs from {source}: {result['passed']} pass, {loops} loop until "
          f"the {args.wall_s:g} s limit; {result['cpus']} CPUs")
    print(f"  serial (1 worker)        {result['serial_programs_per_s']:8.2f} programs/s")
    print(f"  parallel ({workers} workers)     {result['parallel_programs_per_s']:8.2f} programs/s")
    print(f"  ratio                    {result['ratio']:8.2f}x")
    print(f"  rewards that differ      {result['differing_rewards']:8d}   (a busy machine can push a "
          "program past its limit in one run only)")
    return 0
