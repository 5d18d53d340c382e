"""ponder.trm: the 6x6 Sudoku task, the TRM recursion's gradient path, halting, and exact resume."""

import itertools
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from ponder.trm import sudoku
from ponder.trm.model import TRM, ModelShape
from ponder.trm.train import TRMConfig, draw_batch, make_data, train_batch, train_trm, EMA


def test_generated_puzzles_have_one_solution_and_the_asked_givens():
    puzzles, solutions = sudoku.generate(12, (10, 14), seed=3)
    assert len({s.tobytes() for s in solutions}) == 12
    for p, s in zip(puzzles, solutions):
        assert sudoku.is_solution(s)
        assert 10 <= (p > 0).sum() <= 14
        assert np.array_equal(p[p > 0], s[p > 0])  # the givens are the solution's digits
        assert sudoku.count_solutions(p, limit=2) == 1
        found = []
        sudoku.count_solutions(p, limit=1, out=found)
        assert found == s.tolist()
    again, _ = sudoku.generate(12, (10, 14), seed=3)
    assert np.array_equal(puzzles, again)  # seeded
    # a grid with several solutions is counted right (against brute force over its blanks)
    several = solutions[0].copy()
    several[[0, 1, 6, 7]] = 0
    brute = 0
    for digits in itertools.product(range(1, 7), repeat=4):
        filled = several.copy()
        filled[[0, 1, 6, 7]] = digits
        brute += sudoku.is_solution(filled)
    assert brute >= 1 and sudoku.count_solutions(several, limit=10) == brute


def test_heldout_and_training_share_no_solution_grid_even_augmented():
    cfg = TRMConfig(train_puzzles=150, heldout_puzzles=60, givens=[20, 24], batch_size=32)
    data = make_data(cfg)
    train = {g.tobytes() for g in data["train_solutions"]}
    held = {g.tobytes() for g in data["heldout_solutions"]}
    assert len(held) == 60 and len(train) == 150 and not train & held
    # An augmentation that lands on a held-out grid is drawn again: make the first draw's grids
    # "held out" and the batch must avoid every one of them.
    idx = list(range(32))
    _, first_s = draw_batch(cfg, data, idx, step=1, heldout=set())
    banned = {g.tobytes() for g in first_s}
    p, s = draw_batch(cfg, data, idx, step=1, heldout=banned)
    assert not {g.tobytes() for g in s} & banned
    for pk, sk in zip(p, s):
        assert sudoku.is_solution(sk) and np.array_equal(pk[pk > 0], sk[pk > 0])


@pytest.mark.parametrize("name", sorted(sudoku.NAMED))
def test_each_symmetry_keeps_a_solved_grid_valid(name):
    _, solutions = sudoku.generate(5, 20, seed=1)
    for s in solutions:
        assert sudoku.is_solution(sudoku.apply_named(s, name))


def test_augmentation_keeps_puzzles_valid_and_never_transposes():
    puzzles, solutions = sudoku.generate(8, 12, seed=2)
    p, s = sudoku.augment(puzzles, solutions, np.random.default_rng(0))
    for pk, sk in zip(p, s):
        assert sudoku.is_solution(sk) and sudoku.count_solutions(pk) == 1
        assert np.array_equal(pk[pk > 0], sk[pk > 0]) and (pk > 0).sum() == 12
    # Transposition is not a symmetry of 2x3 boxes...
    assert not any(sudoku.is_solution(g.reshape(6, 6).T.reshape(-1)) for g in solutions)
    # ... and augment never applies it: recover each draw's cell map with one-given probes (the
    # same seed draws the same symmetry) and check rows stay rows within bands, columns stay
    # columns within stacks.
    for seed in range(20):
        where = np.empty(36, dtype=int)
        for cell in range(36):
            probe = np.zeros((1, 36), dtype=np.int8)
            probe[0, cell] = 1
            out, _ = sudoku.augment(probe, probe, np.random.default_rng(seed))
            where[cell] = np.flatnonzero(out[0])[0]
        rows, cols = where.reshape(6, 6) // 6, where.reshape(6, 6) % 6
        assert (rows == rows[:, :1]).all() and (cols == cols[:1, :]).all()  # a row maps to one row
        assert (rows[0::2] // 2 == rows[1::2] // 2).all()  # rows of a band stay in one band
        assert (cols[:, 0:3] // 3 == cols[:, :1] // 3).all() and (cols[:, 3:6] // 3 == cols[:, 3:4] // 3).all()
        assert len(set(where)) == 36


def _traced_step(grad: str, T: int = 3, n: int = 3):
    """One supervision step with every application of the net recorded: (outputs, logits, model)."""
    torch.manual_seed(0)
    model = TRM(ModelShape(hidden=16, layers=1))
    outputs = []

    def keep(_module, _inputs, output):
        if output.requires_grad:
            output.retain_grad()
        outputs.append(output)

    model.net.register_forward_hook(keep)
    puzzle = torch.as_tensor(sudoku.generate(4, 14, seed=0)[0])
    y, z = model.start(4)
    _, _, logits, q = model.supervision_step(model.embed_puzzle(puzzle), y, z, T, n, grad)
    (logits.square().sum() + q.sum()).backward()
    assert len(outputs) == T * (n + 1)
    return outputs, logits, model


def _has_grad(t: torch.Tensor) -> bool:
    return t.requires_grad and t.grad is not None and t.grad.abs().sum() > 0


def test_gradient_flows_only_through_the_last_outer_step():
    T, n = 3, 3
    outputs, _, model = _traced_step("full", T, n)
    earlier, last = outputs[: (T - 1) * (n + 1)], outputs[(T - 1) * (n + 1):]
    assert not any(o.requires_grad for o in earlier)  # not on the graph at all: no gradient reaches them
    assert all(_has_grad(o) for o in last)  # every application of the last outer step gets one
    assert all(p.grad is not None for p in model.net.parameters())


def test_one_step_gradient_differs_exactly_in_the_last_outer_step():
    T, n = 3, 3
    full, logits_full, model_full = _traced_step("full", T, n)
    one, logits_one, model_one = _traced_step("one_step", T, n)
    assert torch.equal(logits_full, logits_one)  # same forward, same answer
    last = (T - 1) * (n + 1)
    assert not any(o.requires_grad for o in one[:last])  # the earlier outer steps: as in full
    # within the last outer step: the first n - 1 z updates leave the graph; the last z and the y update keep it
    assert not any(o.requires_grad for o in one[last:last + n - 1])
    assert all(_has_grad(o) for o in one[last + n - 1:])
    assert all(_has_grad(o) for o in full[last:last + n - 1])
    grads = [(a.grad - b.grad).abs().max() for a, b in zip(model_full.net.parameters(), model_one.net.parameters())]
    assert max(grads) > 0


def test_halting_at_a_threshold_stops_early():
    torch.manual_seed(0)
    model = TRM(ModelShape(hidden=16, layers=1))
    puzzle = torch.as_tensor(sudoku.generate(6, 14, seed=0)[0])
    # The halting head starts at "keep going": every puzzle runs all the steps.
    _, used = model.solve(puzzle, T=1, n=1, steps=5, halt=True)
    assert used.tolist() == [5] * 6
    with torch.no_grad():
        model.halt.bias.fill_(0.3)
    _, used = model.solve(puzzle, T=1, n=1, steps=5, halt=True)  # logit 0.3 > threshold 0: stop after one
    assert used.tolist() == [1] * 6
    _, used = model.solve(puzzle, T=1, n=1, steps=5, halt=True, threshold=0.5)  # 0.3 < 0.5: go on
    assert used.tolist() == [5] * 6
    # the same head drops puzzles from the training batch
    cfg = TRMConfig(hidden=16, layers=1, T=1, n=1, sup_steps=5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    p, s = sudoku.generate(6, 14, seed=0)
    stats = train_batch(model, optimizer, cfg, EMA(model, 0.0), torch.as_tensor(p), torch.as_tensor(s))
    assert stats["train/sup_steps"] == 1


TINY = dict(hidden=16, layers=1, T=2, n=1, sup_steps=2, steps=6, batch_size=8, train_puzzles=40,
            heldout_puzzles=10, givens=[22, 26], save_every=3, warmup_steps=2, ema_decay=0.9,
            tensorboard=False, threads=1)


def test_resume_after_a_kill_is_exact(tmp_path, capsys):
    whole = train_trm(TRMConfig(**TINY, output_dir=str(tmp_path / "whole")), progress=False)
    config = tmp_path / "tiny.yaml"
    config.write_text("\n".join(f"{k}: {json.dumps(v)}" for k, v in TINY.items()) + "\n")
    run = tmp_path / "killed"
    # kill -9 the run right after its step-3 checkpoint is written
    killer = textwrap.dedent(f"""
        import os, signal
        from ponder.runtime import checkpoint
        save = checkpoint.save
        def save_then_die(root, step, *args, **kwargs):
            path = save(root, step, *args, **kwargs)
            if step == 3:
                os.kill(os.getpid(), signal.SIGKILL)
            return path
        checkpoint.save = save_then_die
        from ponder.cli import main
        main(["train", "trm", {str(config)!r}, "output_dir={run}"])
    """)
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    killed = subprocess.run([sys.executable, "-c", killer], capture_output=True, text=True, env=env)
    assert killed.returncode == -9, killed.stderr
    assert not (run / "model.pt").exists()
    resumed = subprocess.run([sys.executable, "-m", "ponder", "train", "trm", str(config), f"output_dir={run}"],
                             capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr
    a = torch.load(tmp_path / "whole" / "model.pt", weights_only=False)
    b = torch.load(run / "model.pt", weights_only=False)
    for key in ("weights", "ema"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    def losses(folder):
        return [json.loads(line)["loss"] for line in (folder / "metrics.jsonl").read_text().splitlines()]

    assert losses(run) == losses(tmp_path / "whole") and len(losses(run)) == 6
    assert whole["heldout_exact"] is not None
    # `ponder trm eval` of the finished run
    from ponder.cli import main

    assert main(["trm", "eval", str(run), "--sup-steps", "1-3", "--halt", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["sup_steps"] for r in result["rows"]] == [1, 2, 3] and result["puzzles"] == 10
    # a changed setting is refused on resume
    assert main(["train", "trm", str(config), f"output_dir={run}", "lr=0.5"]) == 2
    assert "lr" in capsys.readouterr().err


def test_attention_mixer_runs_the_same_recursion():
    torch.manual_seed(0)
    model = TRM(ModelShape(hidden=16, layers=2, mixer="attention", heads=2))
    puzzle = torch.as_tensor(sudoku.generate(3, 14, seed=0)[0])
    y, z = model.start(3)
    y2, z2, logits, q = model.supervision_step(model.embed_puzzle(puzzle), y, z, T=2, n=2)
    assert logits.shape == (3, 36, 6) and q.shape == (3,) and not y2.requires_grad
    logits.sum().backward()
    assert all(p.grad is not None for p in model.net.parameters())
