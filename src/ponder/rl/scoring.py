"""Scoring rollouts: which reward functions a config names, the task verifier, calling the rewards
on a step's completions (in parallel), overlong shaping.

A reward function has one of two forms:
- per sample (ponder.rewards' API): fn(prompt, completion, problem) -> float | None;
- batched (TRL's): fn(prompts, completions, **kwargs) -> list[float | None], one value per
  completion, the keyword arguments carrying the problems' fields one list per field (`answer`
  and each field of `problem.meta`), as TRL passes dataset columns.
A function with a parameter named `prompts` or `completions` is batched; set `fn.batched = True`
(or False) to declare the form otherwise. None means "not applicable".

Config names resolve as: "correct" (the task's own verifier, read as `ponder eval` reads it), a function in
ponder.rewards, "package.module:function" (the current folder is importable), or
"path/to/file.py:function".
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ponder.rewards.worker_pool import thread_map
from ponder.tasks import FAMILIES, family

RewardFn = Callable[[str, str, object], "float | None"]
log = logging.getLogger(__name__)


class RewardError(ValueError):
    """A reward function raised, or returned something that is not a reward."""


def verifier(extract: str = "lenient") -> RewardFn:
    """The task's own verifier as a reward named "correct": 1.0 when the completion solves the
    problem, else 0.0, read as `ponder eval` reads it (ponder.evaluate.prompts.grade): synthetic
    families by their exact check, math by ponder.rewards.math with `extract` ("lenient" or
    "strict"); other kinds by ponder.rewards.accuracy when that exists."""
    from ponder.evaluate.prompts import EXTRACT_MODES

    if extract not in EXTRACT_MODES:
        raise ValueError(f"extract must be one of {EXTRACT_MODES}, not {extract!r}")

    def correct(prompt: str, completion: str, problem) -> float | None:
        if problem.kind in FAMILIES or problem.kind == "math":
            from ponder.evaluate.prompts import grade

            return float(grade(problem, prompt, completion, extract=extract).correct)
        import ponder.rewards

        accuracy = getattr(ponder.rewards, "accuracy", None)
        if accuracy is None:
            raise ValueError(f"no verifier for problem kind {problem.kind!r} (problem {problem.id})")
        return accuracy(prompt, completion, problem)

    return correct


correct = verifier()  # the default reading, lenient, as `ponder eval`


def resolve_reward(name: str | RewardFn, extract: str = "lenient") -> RewardFn:
    """The reward function a config entry names (see the module docstring); a function is itself.
    Anything else is refused here, before a model is loaded or a completion generated."""
    if callable(name):
        return name
    if not isinstance(name, str):
        raise ValueError(f"reward {name!r}: expected a function or a name, got {type(name).__name__}")
    if name == "correct":
        return verifier(extract)
    if ":" in name:
        where, _, attr = name.rpartition(":")
        module = _load_file(name, where) if where.endswith(".py") or os.sep in where else _import(name, where)
        fn = getattr(module, attr, None)
    else:
        import ponder.rewards

        fn = getattr(ponder.rewards, name, None)
    if not callable(fn):
        raise ValueError(f"reward {name!r} not found (use 'correct', a ponder.rewards function, "
                         "module:function or path/to/file.py:function)")
    return fn


def _import(name: str, module_name: str):
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())  # after installed packages, so a local file shadows none
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"reward {name!r}: cannot import {module_name} (from {os.getcwd()}): {exc}") from exc


def _load_file(name: str, where: str):
    path = Path(where).expanduser().resolve()
    if not path.is_file():
        raise ValueError(f"reward {name!r}: no file {path}")
    # one module per file, however many rewards it holds; registered so dataclasses and pickle work
    module_name = f"_ponder_reward_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    if str(path.parent) not in sys.path:
        sys.path.append(str(path.parent))  # so the file can import its neighbours
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise ValueError(f"reward {name!r}: cannot load {path}: {type(exc).__name__}: {exc}") from exc
    return module


def reward_name(fn: RewardFn) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


def is_batched(fn: RewardFn) -> bool:
    """TRL's form, fn(prompts, completions, **kwargs)? (see the module docstring)"""
    declared = getattr(fn, "batched", None)
    if declared is not None:
        return bool(declared)
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # some builtins have no signature: ponder's form
        return False
    return "prompts" in params or "completions" in params


def score(fns: Sequence[RewardFn], prompts: Sequence[str], texts: Sequence[str], problems: Sequence,
          workers: int | None = None, nonfinite: dict[str, int] | None = None) -> torch.Tensor:
    """[N, K] float64 rewards of N completions by K functions, NaN where a function returned None.

    Per-sample functions run `workers` calls at a time in threads (default: one per CPU), since
    the costly ones wait on other processes (the code sandbox, the math grader's workers); they
    must be thread-safe, as pure functions are. A batched function gets all N at once. Results
    do not depend on `workers`. A NaN or inf is logged as a warning naming the reward, counted
    into `nonfinite[name]` when that dict is given, and scored NaN (not applicable). A function
    that raises or returns a non-number, or a batched one returning a wrong-length list, raises
    RewardError naming the reward and the sample.
    """
    n = len(texts)
    if not len(prompts) == len(problems) == n:
        raise ValueError(f"score: {len(prompts)} prompts, {n} completions, {len(problems)} problems")
    names = [reward_name(fn) for fn in fns]
    per_sample = [k for k, fn in enumerate(fns) if not is_batched(fn)]

    def call(job: tuple[int, int]):
        i, k = job
        try:
            return fns[k](prompts[i], texts[i], problems[i])
        except Exception as exc:
            raise RewardError(f"reward {names[k]!r} raised on sample {i} ({_which(problems[i])}): "
                              f"{type(exc).__name__}: {exc}") from exc

    jobs = [(i, k) for i in range(n) for k in per_sample]
    columns: dict[int, list] = {k: [None] * n for k in per_sample}
    for (i, k), value in zip(jobs, thread_map(call, jobs, workers)):
        columns[k][i] = value
    for k, fn in enumerate(fns):
        if k not in columns:
            columns[k] = _call_batched(fn, names[k], prompts, texts, problems)

    out = torch.full((n, len(fns)), float("nan"), dtype=torch.float64)
    for k, name in enumerate(names):
        bad = []
        for i, value in enumerate(columns[k]):
            x = _number(value, name, i, problems[i])
            if math.isfinite(x):
                out[i, k] = x
            elif value is not None:  # NaN or inf, not None
                bad.append(i)
        if bad:
            log.warning("reward %r returned NaN or inf for %d of %d completions (first: sample %d, %s); "
                        "they count as not applicable", name, len(bad), n, bad[0], _which(problems[bad[0]]))
        if nonfinite is not None:
            nonfinite[name] = nonfinite.get(name, 0) + len(bad)
    return out


def _call_batched(fn: RewardFn, name: str, prompts: Sequence[str], texts: Sequence[str],
                  problems: Sequence) -> list:
    """fn(prompts=..., completions=..., answer=[...], <meta field>=[...]) checked for length;
    a function without **kwargs gets only the fields it names."""
    kwargs: dict[str, list] = {"prompts": list(prompts), "completions": list(texts),
                               "answer": [getattr(p, "answer", None) for p in problems]}
    metas = [getattr(p, "meta", None) or {} for p in problems]
    for key in dict.fromkeys(key for meta in metas for key in meta):
        kwargs.setdefault(key, [meta.get(key) for meta in metas])
    try:
        params = inspect.signature(fn).parameters.values()
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            kwargs = {key: value for key, value in kwargs.items() if key in {p.name for p in params}}
    except (TypeError, ValueError):
        pass
    try:
        values = fn(**kwargs)
    except Exception as exc:
        raise RewardError(f"reward {name!r} raised on a batch of {len(texts)} completions: "
                          f"{type(exc).__name__}: {exc}") from exc
    if isinstance(values, (str, bytes, dict)) or not hasattr(values, "__len__"):
        raise RewardError(f"reward {name!r} returned {type(values).__name__}, expected a list of "
                          f"{len(texts)} values (one per completion)")
    if len(values) != len(texts):
        raise RewardError(f"reward {name!r} returned {len(values)} values for {len(texts)} completions "
                          f"(samples 0-{len(texts) - 1})")
    return list(values)


def _number(value, name: str, i: int, problem) -> float:
    """A reward value as a float (NaN for None); anything else that is not a number is an error."""
    if value is None:
        return float("nan")
    if not isinstance(value, (str, bytes, list, tuple, dict)):
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
    raise RewardError(f"reward {name!r} returned {type(value).__name__} {str(value)[:60]!r} for sample {i} "
                      f"({_which(problem)}): expected a number or None")


def _which(problem) -> str:
    return f"problem {getattr(problem, 'id', '?')}"


def overlong_penalty(lengths: torch.Tensor, max_new_tokens: int, buffer: int, penalty: float) -> torch.Tensor:
    """DAPO's soft overlong punishment: 0 up to max - buffer tokens, then a linear ramp to -penalty."""
    excess = (lengths.double() - (max_new_tokens - buffer)).clamp(min=0)
    return -penalty * (excess / buffer).clamp(max=1.0)
