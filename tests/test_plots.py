"""Training plots: titled, every reward function drawn, and a line that repeats another (the total
reward when "correct" is the only reward is also the accuracy) named in the legend, not hidden."""

import pytest

from ponder.runtime.metrics import plot


@pytest.fixture
def figures(monkeypatch):
    """The figures plot() saves, kept open for inspection."""
    from matplotlib.figure import Figure

    saved = []
    original = Figure.savefig

    def keep(self, *args, **kwargs):
        saved.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    return saved


def _history(correct, fmt):
    history = []
    for step, (c, f) in enumerate(zip(correct, fmt), start=1):
        history.append({"step": step, "reward/correct/mean": c, "reward/format/mean": f, "reward/format/std": 0.1,
                        "reward/total/mean": c + f, "accuracy": c})
    return history


def test_each_reward_is_drawn_and_the_figure_is_titled(tmp_path, figures):
    history = _history([0.1, 0.3, 0.5], [0.2, 0.2, 0.4])
    history.insert(2, {"step": 2, "event": "rollback"})
    [path] = plot(history, tmp_path, {"reward": ["reward/total/mean", "reward/*/mean", "accuracy"]})
    assert path == tmp_path / "reward.png" and path.read_bytes()[:4] == b"\x89PNG"
    [ax] = figures[0].axes
    assert ax.get_title() == f"reward · {tmp_path.name}"
    labels = [line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")]
    assert labels == ["reward/total/mean", "reward/correct/mean = accuracy", "reward/format/mean"]


def test_a_line_equal_to_another_is_drawn_once_and_named_in_the_legend(tmp_path, figures):
    # "correct" as the only reward: total reward, its mean and the accuracy are one series.
    history = [{"step": s, "reward/correct/mean": a, "reward/total/mean": a, "accuracy": a}
               for s, a in enumerate([0.25, 0.5, 0.75], start=1)]
    plot(history, tmp_path, {"reward": ["reward/total/mean", "reward/*/mean", "accuracy"],
                             "heldout_accuracy": ["eval/accuracy"]})
    assert len(figures) == 1  # no held-out evaluation in the history: no empty plot
    [ax] = figures[0].axes
    [line] = [line for line in ax.get_lines() if not line.get_label().startswith("_")]
    assert line.get_label() == "reward/total/mean = reward/correct/mean = accuracy"
    assert list(line.get_ydata()) == [0.25, 0.5, 0.75]
