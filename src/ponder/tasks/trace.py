"""Synthetic family "trace": predict a variable after a small program with loops, branches and
functions, with the program's execution trace as the scratchpad (a world-model objective).

Prompt: the program, then the variable asked for::

    a=2
    for i in range(3):
     a=a+i
    b=a*2
    b?

Completions (the trace format is ponder.tasks.tracer's: frames of executed lines and the
integer variables each changed, ``;`` between frames):
  scratchpad  ``<think>1a=2;2i=0;3;2i=1;3a=3;2i=2;3a=5;2;4b=10</think>\\boxed{10}``
  direct      ``<think></think>\\boxed{10}``
  trace only  prompt ``PROGRAM\\ntrace?``, completion ``<think>TRACE</think>`` (`trace_example`):
              "given the program, predict its trace", the world-model training target.

Gold answers and traces come from running the program under ``sys.settrace`` (ponder.tasks.tracer).
Generated programs are ours and run in-process with only ``range`` as a builtin; a user's
program (`from_source`) runs inside the code sandbox (ponder.rewards.sandbox) and only its
trace comes back. Kinds: straight (assignments only), loop (``for`` / ``while``), branch
(``if``/``else``), function (a ``def`` called once or twice). Caps: MAX_STEPS frames, values
within +-MAX_ABS, MAX_TRACE_CHARS characters of trace; a program past one is rejected at
generation (and refused from a user). The split is a hash of the prompt, as for every family.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from ponder.rewards import sandbox  # shared with the code verifier; ponder.rewards never imports ponder.tasks
from ponder.tasks import synthetic, tracer
from ponder.tasks.problem import Problem
from ponder.tasks.tracer import Frame, TraceError, trace_text

NAME = "trace"
KINDS = ("straight", "loop", "branch", "function")
MAX_STEPS = 16  # frames per trace
MAX_ABS = 99  # every variable stays within +-MAX_ABS, which keeps answers and frames short
MAX_TRACE_CHARS = 72  # characters of trace text; with the prompt, an example fits 160 tokens
TRACE_QUERY = "trace?"  # last line of a trace-prediction prompt
_KEYWORDS = "def return for in range while if else"
ALPHABET = "".join(sorted(set(_KEYWORDS + "abcfixy0123456789=+-*<>:;,()? \n" + TRACE_QUERY)
                          | set(synthetic.FRAME_ALPHABET)))
_BUILTINS = {"range": range}  # all a generated program may call besides its own function


def _operand(rng: random.Random, defined: list[str]) -> str:
    return rng.choice(defined) if defined and rng.random() < 0.4 else str(rng.randint(1, 9))


def _assign(rng: random.Random, target: str, defined: list[str], indent: str = "") -> str:
    if not defined:
        return f"{indent}{target}={rng.randint(1, 9)}"
    left, op, right = rng.choice(defined), rng.choice("+-*"), _operand(rng, defined)
    if op == "-" and right == left:  # x-x is always 0, a shortcut that would flood the answers
        right = str(rng.randint(1, 9))
    return f"{indent}{target}={left}{op}{right}"


def _straight(rng: random.Random) -> list[str]:
    lines, defined = [], []
    for _ in range(rng.randint(3, 4)):
        target = rng.choice("abc")
        lines.append(_assign(rng, target, defined))
        defined += [target] if target not in defined else []
    return lines


def _loop(rng: random.Random) -> list[str]:
    lines = [f"a={rng.randint(1, 9)}"]
    if rng.random() < 0.5:
        lines.append(f"b={rng.randint(0, 9)}")
    defined = ["a", "b"][:len(lines)]
    if rng.random() < 0.7:
        target = rng.choice(defined)
        lines.append(f"for i in range({rng.randint(2, 3)}):")
        lines.append(f" {target}={target}{rng.choice('+-*')}{rng.choice(['i', *defined, str(rng.randint(1, 5))])}")
    else:
        lines.append(f"while a<{rng.randint(10, 60)}:")
        lines.append(f" a=a{rng.choice('+*')}{rng.randint(2, 9)}")
    if rng.random() < 0.5:
        lines.append(_assign(rng, "c", defined))
    return lines


def _branch(rng: random.Random) -> list[str]:
    lines = [f"a={rng.randint(1, 9)}", f"b={rng.randint(1, 9)}"]
    left, right = ("a", "b") if rng.random() < 0.6 else ("a", str(rng.randint(1, 9)))
    target = rng.choice("bc")
    lines += [f"if {left}{rng.choice('<>')}{right}:", _assign(rng, target, ["a", "b"], " "),
              "else:", _assign(rng, target, ["a", "b"], " ")]
    if rng.random() < 0.4:
        lines.append(_assign(rng, "a", ["a", "b", target]))
    return lines


def _function(rng: random.Random) -> list[str]:
    lines = ["def f(x):"]
    if rng.random() < 0.5:
        lines += [f" y=x{rng.choice('+-*')}{rng.randint(1, 9)}", f" return y{rng.choice('+-*')}x"]
    else:
        lines.append(f" return x{rng.choice('+-*')}{rng.randint(1, 9)}")
    lines += [f"a={rng.randint(1, 9)}", "b=f(a)"]
    if rng.random() < 0.5:
        lines.append(f"c=f(b){rng.choice('+-')}a")
    return lines


_SHAPES = {"straight": _straight, "loop": _loop, "branch": _branch, "function": _function}
_TOP_ASSIGN = re.compile(r"([A-Za-z_]\w*)\s*=(?!=)")  # `name =` at the start of an unindented line


def _query(program: str) -> str:
    """The variable the last unindented assignment sets (it always runs)."""
    for line in reversed(program.splitlines()):
        found = _TOP_ASSIGN.match(line)
        if found:
            return found.group(1)
    raise ValueError(f"{program!r}: no top-level assignment to ask about")


def prompt(program: str, query: str) -> str:
    return f"{program}\n{query}?"


def make(program: str, query: str | None = None, kind: str | None = None,
         traced: tuple[list[Frame], dict[str, int]] | None = None) -> Problem:
    """The problem "value of `query` after `program`" (default: the last top-level assignment),
    gold answer and trace from running it under sys.settrace. `traced` is a trace already taken
    (the sandbox's, for a user's program). Raises TraceError past a cap."""
    query = query or _query(program)
    frames, final = traced if traced is not None else tracer.trace(program, MAX_STEPS, MAX_ABS, _BUILTINS)
    text = trace_text(frames)
    if len(frames) > MAX_STEPS or len(text) > MAX_TRACE_CHARS:
        raise TraceError(f"trace of {len(frames)} steps, {len(text)} characters: past the caps "
                         f"({MAX_STEPS} steps, {MAX_TRACE_CHARS} characters)")
    if query not in final:
        raise ValueError(f"{program!r}: asks for {query}, which the program never sets")
    shown = prompt(program, query)
    return Problem(id=f"{NAME}-{shown}", prompt=shown, answer=str(final[query]), kind=NAME,
                   meta={"program": program, "query": query, "trace": text, "steps": len(frames),
                         "kind": kind or kind_of(program), "split": synthetic.split_of(NAME, shown)})


def kind_of(program: str) -> str:
    """The program's kind by its syntax: function, loop, branch, else straight."""
    if "def " in program:
        return "function"
    if "for " in program or "while " in program:
        return "loop"
    return "branch" if "if " in program else "straight"


def generate(split: str, n: int, seed: int = 0) -> list[Problem]:
    """n distinct problems of a split, kinds in turn, drawn with a seeded RNG (same arguments,
    same list). Programs past a cap are rejected and drawn again."""
    synthetic.check_split(split)
    rng = random.Random(seed)

    def draw(kept: int) -> Problem | None:
        kind = KINDS[kept % len(KINDS)]
        try:
            return make("\n".join(_SHAPES[kind](rng)), kind=kind)
        except TraceError:
            return None

    return synthetic.distinct(NAME, split, n, draw, tries=400 * n + 1000)


def from_source(source: str, query: str | None = None, limits=None) -> Problem:
    """A problem from a user's own program: it runs inside the code sandbox
    (ponder.rewards.sandbox), which returns only its trace. `limits`: a sandbox.Limits (default
    10 s, 512 MiB). Raises TraceError when the program raises, passes a cap, or the sandbox stops it."""
    files = {"tracer.py": Path(tracer.__file__).read_text(encoding="utf-8"), "program.py": source}
    outcome = sandbox.run_python("tracer.py", files, limits=limits or sandbox.Limits(wall_s=10.0, memory_mb=512),
                                 env={"PONDER_TRACE_CAPS": f"{MAX_STEPS},{MAX_ABS}"})
    if outcome.timed_out or outcome.returncode != 0:
        why = "timed out" if outcome.timed_out else f"exit status {outcome.returncode}"
        raise TraceError(f"the sandbox stopped the program ({why}): "
                         f"{outcome.stderr.decode('utf-8', 'replace')[-300:]}")
    try:
        result = json.loads(outcome.report.decode("utf-8", "replace").splitlines()[-1])
    except (IndexError, ValueError) as e:
        raise TraceError(f"the sandbox returned no trace: {outcome.stderr.decode('utf-8', 'replace')[-300:]}") from e
    if "error" in result:
        raise TraceError(result["error"])
    frames = [Frame(line, tuple((n, v) for n, v in changes), returned) for line, changes, returned in result["frames"]]
    final = result["final"]
    return make(source, query, traced=(frames, final))


def scratch_text(problem: Problem) -> str:
    """The program's execution trace."""
    return problem.meta["trace"]


def sft_text(problem: Problem, scratchpad: bool) -> str:
    return synthetic.completion(scratch_text(problem) if scratchpad else "", problem.answer)


def trace_example(problem: Problem) -> dict:
    """A world-model training example: {"prompt": program + "\\ntrace?", "completion": think-wrapped trace}."""
    return {"prompt": f"{problem.meta['program']}\n{TRACE_QUERY}",
            "completion": f"{synthetic.THINK_OPEN}{scratch_text(problem)}{synthetic.THINK_CLOSE}"}


def check(completion: str, problem: Problem) -> bool:
    return synthetic.check(completion, problem.answer)
