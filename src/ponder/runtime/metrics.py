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
    """One PNG per entry of `series` (file stem -> metric keys) of those metrics against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for stem, keys in series.items():
        fig, ax = plt.subplots(figsize=(6, 3.5))
        drawn = False
        for key in keys:
            points = [(r["step"], r[key]) for r in history if key in r and "event" not in r]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="o" if len(points) < 30 else None, label=key)
                drawn = True
        for r in history:
            if r.get("event") == "rollback":
                ax.axvline(r["step"], color="red", alpha=0.3)
        if not drawn:
            plt.close(fig)
            continue
        ax.set_xlabel("step")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = Path(out_dir) / f"{stem}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths
