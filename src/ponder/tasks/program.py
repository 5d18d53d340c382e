"""Synthetic family "program": predict a variable's value after a short straight-line program.

Prompt ``a=3;b=a+4;a=b*2;a?`` (a few assignments over a, b, c with + - * and small constants,
then the variable asked for). The scratchpad traces each assignment's new value:
  scratchpad  ``<think>a=3,b=7,a=14</think>\\boxed{14}``
  direct      ``<think></think>\\boxed{14}``
The gold answer is computed at generation time by ``run``, a tiny evaluator over Python's AST
that accepts only integer assignments and + - * (never ``exec``), so a verifier can re-run a
program safely too. The canonical content of a problem is its prompt.
"""

from __future__ import annotations

import ast
import random

from ponder.tasks import synthetic
from ponder.tasks.problem import Problem

NAME = "program"
VARIABLES = "abc"
ALPHABET = "".join(sorted(set(VARIABLES + "0123456789=;+-*?,") | set(synthetic.FRAME_ALPHABET)))
MIN_STATEMENTS, MAX_STATEMENTS = 3, 4
MAX_ABS = 99  # every intermediate value stays within +-MAX_ABS, which keeps answers short
_OPS = {ast.Add: lambda x, y: x + y, ast.Sub: lambda x, y: x - y, ast.Mult: lambda x, y: x * y}


def _value(node: ast.AST, env: dict[str, int], program: str) -> int:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.Name):
        if node.id not in env:
            raise ValueError(f"{program!r}: {node.id} used before assignment")
        return env[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_value(node.operand, env, program)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_value(node.left, env, program), _value(node.right, env, program))
    raise ValueError(f"{program!r}: unsupported expression {ast.dump(node)[:60]}")


def run(program: str) -> tuple[dict[str, int], list[tuple[str, int]]]:
    """Run a straight-line program safely: (final variables, [(name, new value)] per assignment).

    Raises ValueError for anything beyond ``name = integer expression`` statements.
    """
    try:
        tree = ast.parse(program, mode="exec")
    except SyntaxError as e:
        raise ValueError(f"{program!r}: not a program ({e.msg})") from e
    env: dict[str, int] = {}
    trace: list[tuple[str, int]] = []
    for stmt in tree.body:
        if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
                and isinstance(stmt.targets[0], ast.Name)):
            raise ValueError(f"{program!r}: only single assignments are allowed")
        name = stmt.targets[0].id
        env[name] = _value(stmt.value, env, program)
        trace.append((name, env[name]))
    return env, trace


def _random_statement(rng: random.Random, defined: list[str]) -> str:
    target = rng.choice(VARIABLES)
    if not defined:
        return f"{target}={rng.randint(1, 9)}"
    op = rng.choice("+-*")
    left = rng.choice(defined)
    right = rng.choice(defined) if rng.random() < 0.4 else str(rng.randint(1, 9))
    return f"{target}={left}{op}{right}"


def _random_program(rng: random.Random) -> tuple[str, str]:
    """(program, queried variable); the query is the variable assigned last."""
    statements: list[str] = []
    defined: list[str] = []
    for _ in range(rng.randint(MIN_STATEMENTS, MAX_STATEMENTS)):
        statement = _random_statement(rng, defined)
        statements.append(statement)
        if statement[0] not in defined:
            defined.append(statement[0])
    return ";".join(statements), statements[-1][0]


def prompt(program: str, query: str) -> str:
    return f"{program};{query}?"


def make(program: str, query: str) -> Problem:
    """The problem "value of `query` after `program`", gold computed by running it."""
    env, trace = run(program)
    if query not in env:
        raise ValueError(f"{program!r}: asks for {query}, which is never assigned")
    text = prompt(program, query)
    return Problem(id=f"{NAME}-{text}", prompt=text, answer=str(env[query]), kind=NAME,
                   meta={"program": program, "query": query, "trace": trace,
                         "split": synthetic.split_of(NAME, text)})


def generate(split: str, n: int, seed: int = 0) -> list[Problem]:
    """n distinct problems of a split, drawn with a seeded RNG (same arguments, same list)."""
    synthetic.check_split(split)
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[Problem] = []
    for _ in range(200 * n + 1000):  # the space is large; the bound only guards against a bug
        if len(out) == n:
            break
        program, query = _random_program(rng)
        problem = make(program, query)
        if (problem.prompt in seen or problem.meta["split"] != split
                or any(abs(v) > MAX_ABS for _, v in problem.meta["trace"])):
            continue
        seen.add(problem.prompt)
        out.append(problem)
    if len(out) < n:
        raise ValueError(f"{NAME}: found only {len(out)} distinct {split} problems, asked for {n}")
    return out


def scratch_text(problem: Problem) -> str:
    """Each assignment's new value, in program order."""
    return ",".join(f"{name}={value}" for name, value in problem.meta["trace"])


def sft_text(problem: Problem, scratchpad: bool) -> str:
    return synthetic.completion(scratch_text(problem) if scratchpad else "", problem.answer)


def check(completion: str, problem: Problem) -> bool:
    return synthetic.check(completion, problem.answer)
