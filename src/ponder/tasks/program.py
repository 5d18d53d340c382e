"""Synthetic family "program": predict a variable's value after a short straight-line program.

Prompt ``a=3;b=a+4;a=b*2;a?`` (a few assignments over a, b, c with + - * and small constants,
then the variable asked for). The scratchpad traces each assignment's new value:
  scratchpad  ``<think>a=3,b=7,a=14</think>\\boxed{14}``
  direct      ``<think></think>\\boxed{14}``
The gold answer is computed at generation time by ``run``, a tiny evaluator over Python's AST
that accepts only integer assignments and + - * (never ``exec``), so a verifier can re-run a
program safely too. The canonical content of a problem is its prompt.

The same evaluator serves the calculator tool (ponder.tools) through ``arithmetic``: one
expression, with / // % ** and parentheses as well, computed exactly over fractions, and bounded
(MAX_DIGITS, MAX_EXPRESSION_CHARS) so that ``9**9**9`` is refused before it is computed.
"""

from __future__ import annotations

import ast
import math
import random
from fractions import Fraction

from ponder.tasks import synthetic
from ponder.tasks.problem import Problem

NAME = "program"
VARIABLES = "abc"
ALPHABET = "".join(sorted(set(VARIABLES + "0123456789=;+-*?,") | set(synthetic.FRAME_ALPHABET)))
MIN_STATEMENTS, MAX_STATEMENTS = 3, 4
MAX_ABS = 99  # every intermediate value stays within +-MAX_ABS, which keeps answers short
MAX_DIGITS = 100  # a value (numerator or denominator) may have at most this many digits
MAX_EXPRESSION_CHARS = 200  # longer input is refused unparsed (deep nesting would exhaust the parser)
_LIMIT = 10 ** MAX_DIGITS


def _bounded(x: Fraction, source: str) -> Fraction:
    if max(abs(x.numerator), x.denominator) >= _LIMIT:
        raise ValueError(f"{source!r}: a value exceeds {MAX_DIGITS} digits")
    return x


def _div(x: Fraction, y: Fraction, source: str, op: str) -> Fraction:
    if y == 0:
        raise ValueError(f"{source!r}: division by zero")
    return {"/": x / y, "//": Fraction(x // y), "%": x % y}[op]


def _pow(x: Fraction, y: Fraction, source: str) -> Fraction:
    """x ** y for an integer y, refused before computing when the result would be too long."""
    if y.denominator != 1:
        raise ValueError(f"{source!r}: only whole exponents are allowed")
    if x == 0 and y < 0:
        raise ValueError(f"{source!r}: division by zero")
    # digits of the result ~ |y| * digits of x's numerator and denominator
    size = max(abs(x.numerator), x.denominator)
    if size > 1 and abs(y) * math.log10(size) >= MAX_DIGITS:
        raise ValueError(f"{source!r}: the result of ** would exceed {MAX_DIGITS} digits")
    return x ** int(y)


# What a program may use (the family's problems), and what the calculator adds.
_OPS = {ast.Add: lambda x, y, s: x + y, ast.Sub: lambda x, y, s: x - y, ast.Mult: lambda x, y, s: x * y}
_ARITHMETIC_OPS = {**_OPS, ast.Div: lambda x, y, s: _div(x, y, s, "/"),
                   ast.FloorDiv: lambda x, y, s: _div(x, y, s, "//"), ast.Mod: lambda x, y, s: _div(x, y, s, "%"),
                   ast.Pow: _pow}


def _value(node: ast.AST, env: dict[str, Fraction] | None, source: str, ops: dict = _OPS) -> Fraction:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return _bounded(Fraction(node.value), source)
    # programs hold integers only; the calculator also reads decimals
    if isinstance(node, ast.Constant) and type(node.value) is float and ops is _ARITHMETIC_OPS:
        return _bounded(Fraction(repr(node.value)), source)  # 0.1 is one tenth, not its binary neighbour
    if isinstance(node, ast.Name):
        if env is None:
            raise ValueError(f"{source!r}: names are not allowed ({node.id})")
        if node.id not in env:
            raise ValueError(f"{source!r}: {node.id} used before assignment")
        return env[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _value(node.operand, env, source, ops)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in ops:
        left, right = _value(node.left, env, source, ops), _value(node.right, env, source, ops)
        return _bounded(ops[type(node.op)](left, right, source), source)
    raise ValueError(f"{source!r}: unsupported expression {ast.dump(node)[:60]}")


def arithmetic(expression: str) -> Fraction:
    """The exact value of one arithmetic expression: numbers, + - * / // % **, unary minus and
    parentheses, nothing else (no names, no calls). Raises ValueError for anything else, for a
    division by zero, and for input or values beyond the bounds (MAX_EXPRESSION_CHARS, MAX_DIGITS)."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as e:
        raise ValueError(f"{expression!r}: not an arithmetic expression ({e.msg})") from e
    return _value(tree.body, None, expression, _ARITHMETIC_OPS)


def run(program: str) -> tuple[dict[str, int], list[tuple[str, int]]]:
    """Run a straight-line program safely: (final variables, [(name, new value)] per assignment).

    Raises ValueError for anything beyond ``name = integer expression`` statements.
    """
    try:
        tree = ast.parse(program, mode="exec")
    except SyntaxError as e:
        raise ValueError(f"{program!r}: not a program ({e.msg})") from e
    env: dict[str, Fraction] = {}
    trace: list[tuple[str, int]] = []
    for stmt in tree.body:
        if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
                and isinstance(stmt.targets[0], ast.Name)):
            raise ValueError(f"{program!r}: only single assignments are allowed")
        name = stmt.targets[0].id
        env[name] = _value(stmt.value, env, program)
        trace.append((name, int(env[name])))  # + - * of integers stay integers
    return {k: int(v) for k, v in env.items()}, trace


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

    def draw(_kept: int) -> Problem | None:
        problem = make(*_random_program(rng))
        return None if any(abs(v) > MAX_ABS for _, v in problem.meta["trace"]) else problem

    return synthetic.distinct(NAME, split, n, draw, tries=200 * n + 1000)


def scratch_text(problem: Problem) -> str:
    """Each assignment's new value, in program order."""
    return ",".join(f"{name}={value}" for name, value in problem.meta["trace"])


def sft_text(problem: Problem, scratchpad: bool) -> str:
    return synthetic.completion(scratch_text(problem) if scratchpad else "", problem.answer)


def check(completion: str, problem: Problem) -> bool:
    return synthetic.check(completion, problem.answer)
