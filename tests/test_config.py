"""The typed YAML config loader shared by `ponder train sft` and `ponder train rl`."""

from dataclasses import dataclass, field
from typing import Literal

import pytest

from ponder.config import ConfigError, load_config, save_config


@dataclass
class Optim:
    lr: float = 1e-3
    schedule: Literal["constant", "cosine"] = "constant"


@dataclass
class Run:
    model: str = "base"
    steps: int = 10
    fast: bool = False
    limit: int | None = None
    rewards: list[str] = field(default_factory=lambda: ["accuracy"])
    optim: Optim = field(default_factory=Optim)

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError("steps must be >= 1")


def write(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_yaml_maps_onto_dataclass_and_overrides_apply(tmp_path):
    path = write(tmp_path, "model: m\nsteps: 3\nrewards: [a, b]\noptim:\n  lr: 1e-4\n")
    cfg = load_config(Run, path, ["fast=true", "optim.schedule=cosine", "limit=5", "steps=7"])
    assert cfg == Run(model="m", steps=7, fast=True, limit=5, rewards=["a", "b"],
                      optim=Optim(lr=1e-4, schedule="cosine"))
    assert load_config(Run, None, ["limit=null"]).limit is None


def test_saved_config_loads_back_equal(tmp_path):
    cfg = Run(model="x", rewards=["r"], optim=Optim(lr=0.5))
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(Run, tmp_path / "c.yaml") == cfg


@pytest.mark.parametrize("text,message", [
    ("stepz: 3\n", "run.yaml: unknown key 'stepz'"),
    ("steps: many\n", "run.yaml: key 'steps': expected an integer"),
    ("steps: 1.5\n", "run.yaml: key 'steps': expected an integer"),
    ("fast: maybe\n", "run.yaml: key 'fast': expected true or false"),
    ("optim:\n  schedule: linear\n", "run.yaml: key 'optim.schedule': expected one of 'constant', 'cosine'"),
    ("optim:\n  lrr: 1\n", "run.yaml: unknown key 'optim.lrr'"),
    ("rewards: accuracy\n", "run.yaml: key 'rewards': expected a list"),
    ("steps: 0\n", "run.yaml: .*steps must be >= 1"),
    ("- a\n- b\n", "run.yaml: expected a mapping"),
])
def test_bad_file_names_file_and_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(Run, write(tmp_path, text))


def test_bad_override_names_key(tmp_path):
    path = write(tmp_path, "steps: 3\n")
    with pytest.raises(ConfigError, match="override: unknown key 'optim.momentum'"):
        load_config(Run, path, ["optim.momentum=0.9"])
    with pytest.raises(ConfigError, match="override: key 'optim.lr': expected a number"):
        load_config(Run, path, ["optim.lr=high"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(Run, path, ["steps"])
    with pytest.raises(ConfigError, match="missing.yaml: cannot read"):
        load_config(Run, tmp_path / "missing.yaml")
