"""Training metrics: one JSON line per record in metrics.jsonl, the same scalars in TensorBoard,
and PNG plots at the end. Shared by the RL and SFT loops.

Records are dicts with a "step"; event records (a rollback, a warning) also carry "event".
The full history lives in the train state, so a resumed or rolled-back run rewrites
metrics.jsonl from it and TensorBoard purges the steps it is about to redo.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


class MetricsLog:
    def __init__(self, out_dir: str | Path, history: list[dict[str, Any]], tensorboard: bool = True):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.out_dir / "metrics.jsonl"
        self.history = history
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            last = max((r["step"] for r in history), default=-1)
            self.writer = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=last + 1)
        self.rewrite(history)

    def rewrite(self, history: list[dict[str, Any]]) -> None:
        """Make metrics.jsonl hold exactly `history` (after a resume or a rollback)."""
        self.history = history
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in history))
        tmp.replace(self.path)

    def log(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None and "event" not in record:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(key, value, record["step"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def plot(history: list[dict[str, Any]], out_dir: str | Path, series: dict[str, list[str]]) -> list[Path]:
    """One PNG per entry of `series` (file stem -> metric keys) of those metrics against step.

    A key may hold `*` wildcards ("reward/*/mean": the total and every reward function's mean).
    A line that repeats an earlier one (to 1e-6) (the total reward when "correct" is the only
    reward, which is also the accuracy) is not drawn again over it: the legend names both.
    Each figure is titled with its stem and the run's folder.
    """
    import fnmatch

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [r for r in history if "event" not in r]
    present = sorted({k for r in records for k in r})
    paths = []
    for stem, patterns in series.items():
        keys = list(dict.fromkeys(k for pattern in patterns for k in fnmatch.filter(present, pattern)))
        lines: list[tuple[list, list[str]]] = []  # (points, labels of every key with exactly these points)
        for key in keys:
            points = [(r["step"], r[key]) for r in records if key in r]
            same = next((labels for drawn, labels in lines if len(drawn) == len(points) and all(
                x == u and math.isclose(y, v, rel_tol=1e-6, abs_tol=1e-9) for (x, y), (u, v) in zip(drawn, points))),
                None)
            if same is not None:
                same.append(key)
            elif points:
                lines.append((points, [key]))
        if not lines:
            continue
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for points, labels in lines:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o" if len(points) < 30 else None, label=" = ".join(labels))
        for r in history:
            if r.get("event") == "rollback":
                ax.axvline(r["step"], color="red", alpha=0.3)
        ax.set_title(f"{stem.replace('_', ' ')} · {Path(out_dir).name}")
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = Path(out_dir) / f"{stem}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths
