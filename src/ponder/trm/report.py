"""Measuring TRM runs: `ponder trm eval RUN` (held-out accuracy against the supervision steps used
at inference, and what the halting head spends on easy and hard puzzles) and `ponder trm compare
CONFIG.yaml` (a single pass, TRM and TRM with HRM's one-step gradient: the same net, so the same
parameter count, on the same data; a table, --json, and plots).

The comparison trains each variant in its own process (`python -m ponder train trm`), so that its
peak memory (max RSS) is its own, and keeps its summary in VARIANT/summary.json: a re-run of the
command resumes an interrupted variant and re-evaluates finished ones without training them again.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

# Each variant is the config's TRM with these overrides. The single pass applies the net once
# per puzzle (T=1, n=0, one supervision step); it trains on as many batches as TRM makes
# optimizer steps at most (steps x sup_steps), so it gets at least as many updates and sees more
# puzzles, for far less compute.
VARIANTS = {
    "single": {"T": 1, "n": 0, "sup_steps": 1},
    "trm": {},
    "one_step": {"grad": "one_step"},
}


def curve(model, puzzles, solutions, T: int, n: int, max_steps: int, batch: int = 500) -> dict[str, list[float]]:
    """Exact and per-cell accuracy after each of 1..max_steps supervision steps (no halting): one
    run of max_steps steps, read after each."""
    import torch

    device = next(model.parameters()).device
    exact = np.zeros(max_steps)
    cells = np.zeros(max_steps)
    for i in range(0, len(puzzles), batch):
        trace: list = []
        model.solve(torch.as_tensor(puzzles[i:i + batch], device=device), T, n, max_steps, trace=trace)
        for k, answer in enumerate(trace):
            right = answer.cpu().numpy() == solutions[i:i + batch]
            exact[k] += right.all(1).sum()
            cells[k] += right.sum()
    return {"sup_steps": list(range(1, max_steps + 1)), "exact": (exact / len(puzzles)).tolist(),
            "cell_acc": (cells / (len(puzzles) * puzzles.shape[1])).tolist()}


def halting(model, puzzles, solutions, T: int, n: int, max_steps: int) -> dict[str, Any]:
    """With the halting head deciding (stop at the first step whose halting logit is > 0): exact
    accuracy and mean steps used, over all puzzles and per number of givens."""
    from ponder.trm.train import evaluate

    result = evaluate(model, puzzles, solutions, T, n, max_steps, halt=True)
    givens = (puzzles > 0).sum(1)
    used, solved = np.array(result["steps_used"]), np.array(result["solved"])
    per = {int(g): {"puzzles": int((givens == g).sum()), "mean_steps": float(used[givens == g].mean()),
                    "exact": float(solved[givens == g].mean())} for g in sorted(set(givens.tolist()))}
    return {"exact": result["exact"], "mean_steps": float(used.mean()), "by_givens": per}


def heldout(cfg, puzzles: int | None = None, givens: list[int] | None = None):
    """The run's held-out puzzles (regenerated from its data seed), or fresh ones with `givens`
    whose solution grids avoid the run's training set."""
    from ponder.trm import sudoku
    from ponder.trm.train import make_data

    data = make_data(cfg)
    if givens:
        train = {g.tobytes() for g in data["train_solutions"]}
        p, s = sudoku.generate(puzzles or cfg.heldout_puzzles, (min(givens), max(givens)),
                               seed=[cfg.data_seed, 2, min(givens), max(givens)], exclude=train)
        return p, s
    p, s = data["heldout_puzzles"], data["heldout_solutions"]
    return (p[:puzzles], s[:puzzles]) if puzzles else (p, s)


def eval_main(args) -> int:
    import torch

    from ponder.trm.train import load_trained

    if args.threads:
        torch.set_num_threads(args.threads)
    model, cfg = load_trained(args.run, args.device, ema=not args.raw)
    steps = args.sup_steps or [cfg.sup_steps]
    p, s = heldout(cfg, args.puzzles, args.givens)
    c = curve(model, p, s, cfg.T, cfg.n, max(steps))
    rows = [{"sup_steps": k, "exact": c["exact"][k - 1], "cell_acc": c["cell_acc"][k - 1]} for k in steps]
    result: dict[str, Any] = {"run": str(args.run), "puzzles": len(p), "T": cfg.T, "n": cfg.n,
                              "trained_sup_steps": cfg.sup_steps, "rows": rows}
    if args.halt:
        result["halting"] = halting(model, p, s, cfg.T, cfg.n, max(steps))
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{args.run}: {len(p)} held-out puzzles, T={cfg.T} n={cfg.n}, trained with {cfg.sup_steps} supervision steps")
    print(f"{'sup steps':>9}  {'exact':>7}  {'cells':>7}")
    for r in rows:
        print(f"{r['sup_steps']:>9}  {r['exact']:>7.1%}  {r['cell_acc']:>7.1%}")
    if args.halt:
        h = result["halting"]
        print(f"halting head: exact {h['exact']:.1%}, {h['mean_steps']:.2f} steps on average")
        for g, v in h["by_givens"].items():
            print(f"  {g} givens: {v['puzzles']} puzzles, {v['mean_steps']:.2f} steps, exact {v['exact']:.1%}")
    return 0


def _train_variant(name: str, args, out: Path) -> dict[str, Any]:
    """Train one variant in a child process (or read its summary when it finished before)."""
    from ponder.config import load_config
    from ponder.trm.train import TRMConfig

    folder = out / name
    done = folder / "summary.json"
    if done.exists():
        return json.loads(done.read_text())
    base = load_config(TRMConfig, args.config, args.overrides)
    overrides = dict(VARIANTS[name])
    if name == "single":
        overrides["steps"] = base.steps * base.sup_steps
        overrides["warmup_steps"] = base.warmup_steps * base.sup_steps
        overrides["eval_every"] = base.eval_every * base.sup_steps
        overrides["save_every"] = base.save_every * base.sup_steps
    items = [*args.overrides, *(f"{k}={v}" for k, v in overrides.items()), f"output_dir={folder}"]
    print(f"[trm compare] training {name}: {' '.join(items)}", file=sys.stderr, flush=True)
    proc = subprocess.run([sys.executable, "-m", "ponder", "train", "trm", args.config, *items],
                          stdout=subprocess.PIPE, text=True)
    if proc.returncode:
        raise RuntimeError(f"training variant {name} failed (exit {proc.returncode}); re-run to resume it")
    summary = json.loads(proc.stdout)
    done.write_text(json.dumps(summary, indent=1))
    return summary


def compare_main(args) -> int:
    import torch

    from ponder.trm.train import load_trained

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise ValueError(f"--variants: unknown {unknown} (known: {', '.join(VARIANTS)})")
    rows, curves, halts, sets = [], {}, {}, {}
    for name in names:
        summary = _train_variant(name, args, out)
        model, cfg = load_trained(out / name)
        torch.set_num_threads(cfg.threads or torch.get_num_threads())
        key = (cfg.data_seed, tuple(cfg.givens), cfg.train_puzzles, cfg.heldout_puzzles)
        if key not in sets:  # the variants share their data: generate it once
            sets[key] = heldout(cfg)
        p, s = sets[key]
        steps = 1 if name == "single" else args.max_sup_steps
        c = curve(model, p, s, cfg.T, cfg.n, steps)
        k = min(cfg.sup_steps, steps)
        rows.append({"variant": name, "T": cfg.T, "n": cfg.n, "sup_steps": cfg.sup_steps, "grad": cfg.grad,
                     "parameters": summary["parameters"], "batches": cfg.steps,
                     "exact": c["exact"][k - 1], "cell_acc": c["cell_acc"][k - 1],
                     "best_exact": max(c["exact"]), "best_at": int(np.argmax(c["exact"])) + 1,
                     "train_seconds": summary["train_seconds"], "peak_rss_mib": summary["peak_rss_mib"]})
        curves[name] = c
        if name != "single":
            halts[name] = halting(model, p, s, cfg.T, cfg.n, args.max_sup_steps)
    result = {"config": args.config, "overrides": args.overrides, "heldout_puzzles": len(p),
              "givens": cfg.givens, "rows": rows, "curves": curves, "halting": halts}
    (out / "compare.json").write_text(json.dumps(result, indent=1))
    plots = _plot(result, out)
    if args.json:
        print(json.dumps({**result, "plots": [str(x) for x in plots]}))
        return 0
    print(f"held-out: {len(p)} puzzles with {cfg.givens[0]}-{cfg.givens[1]} givens, none sharing a solution grid with training")
    print(f"{'variant':<9} {'T':>2} {'n':>2} {'N_sup':>5} {'grad':<9} {'params':>8} {'exact':>7} {'cells':>7} "
          f"{'best':>12} {'train s':>8} {'peak MiB':>9}")
    for r in rows:
        best = f"{r['best_exact']:.1%}@{r['best_at']}"
        print(f"{r['variant']:<9} {r['T']:>2} {r['n']:>2} {r['sup_steps']:>5} {r['grad']:<9} {r['parameters']:>8,} "
              f"{r['exact']:>7.1%} {r['cell_acc']:>7.1%} {best:>12} {r['train_seconds']:>8.0f} {r['peak_rss_mib']:>9.0f}")
    for name, h in halts.items():
        per = ", ".join(f"{g}: {v['mean_steps']:.1f}" for g, v in h["by_givens"].items())
        print(f"{name} with halting: exact {h['exact']:.1%}, mean steps {h['mean_steps']:.2f}; by givens {per}")
    print("plots: " + ", ".join(str(x) for x in plots))
    return 0


def _plot(result: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, c in result["curves"].items():
        if len(c["sup_steps"]) == 1:
            ax.axhline(c["exact"][0], linestyle="--", color="gray", label=f"{name} (one pass)")
        else:
            ax.plot(c["sup_steps"], c["exact"], marker="o", label=name)
    trained = [r["sup_steps"] for r in result["rows"] if r["variant"] != "single"]
    if trained:
        ax.axvline(trained[0], color="red", alpha=0.3, label="steps in training")
    ax.set_xlabel("supervision steps at inference")
    ax.set_ylabel("held-out exact accuracy")
    ax.set_title("6x6 Sudoku: accuracy against latent steps")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out / "trm-steps-curve.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    if result["halting"]:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for name, h in result["halting"].items():
            gs = list(h["by_givens"])
            ax.plot([int(g) for g in gs], [h["by_givens"][g]["mean_steps"] for g in gs], marker="o", label=name)
        ax.set_xlabel("givens (fewer: harder)")
        ax.set_ylabel("mean supervision steps used")
        ax.set_title("halting head: steps spent per puzzle")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths.append(out / "trm-halting-steps.png")
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    return paths
