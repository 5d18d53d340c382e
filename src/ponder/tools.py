"""Tool calls inside a completion (tool-integrated reasoning): what the model writes in a tool's
block is run, and the result is written back into the completion as forced tokens, which RL
masks from the loss; the model then goes on writing. Two tools share one interface (`Tool`):

* `PythonTool` runs a fenced Python block in the sandbox, in the format ToRL (arXiv:2503.23383)
  trains with:

      ```python
      print(6 * 7)
      ```
      ```output
      42
      ```

  Every run is a fresh sandbox (ponder.rewards.sandbox: no network, a private read-only
  filesystem, limits), so one call's state does not reach the next; a call costs tens of ms.
* `Calculator` evaluates an arithmetic expression in-process, exactly, over Python's syntax tree
  (ponder.tasks.program.arithmetic: numbers, + - * / // % ** and parentheses, bounded so that
  ``9**9**9`` is refused, not computed), in microseconds:

      <calc>347*862</calc><output>299114</output>

The engine (ponder.engine, `SamplingParams.tool`) asks `code_to_run` after each token the model
itself wrote that could close a block, runs the calls of a step, queues the tokens of `result`,
and records each call (`ToolCall`) on the completion. `tool_metrics` summarises a batch's calls
for RL's per-step metrics; the cost of a call as a reward is ponder.rewards.tools.tool_cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

from ponder.rewards.sandbox import Limits, run_python
from ponder.rewards.tools import CALCULATOR_CALL, CALCULATOR_OUTPUT, PYTHON_CALL
from ponder.tasks.program import arithmetic


@dataclass(frozen=True)
class ToolCall:
    """One call a completion made: what the model wrote, what came back, and whether it ran
    cleanly (False: an error, a timeout, a refused expression)."""

    code: str
    output: str
    ok: bool


class Tool(Protocol):
    """What the engine needs of a tool."""

    name: ClassVar[str]  # what --tool and the `tool` config option call it
    open: str  # starts a call
    close: str  # ends it: the model's text between the two is the call
    max_calls: int  # per completion; later blocks stay plain text

    def code_to_run(self, text: str) -> str | None: ...
    def run(self, code: str) -> ToolCall: ...
    def result(self, output: str) -> str: ...


class _Blocks:
    """The call-finding rule both tools share."""

    open: str
    close: str

    def code_to_run(self, text: str) -> str | None:
        """The code of the block `text` has just closed, or None: the text must end with `close`,
        after an `open` with no `close` in between (an output block closing is not a call)."""
        if not text.endswith(self.close):
            return None
        end = len(text) - len(self.close)
        start = text.rfind(self.open, 0, end)
        if start < 0:
            return None
        code = text[start + len(self.open):end]
        return None if not code or self.close in code else code


@dataclass(frozen=True)
class PythonTool(_Blocks):
    """Run the model's fenced Python blocks and write their output back into the completion."""

    name: ClassVar[str] = "python"
    open: str = PYTHON_CALL[0]  # starts a call
    close: str = PYTHON_CALL[1]  # ends it: the model's text up to here is the code
    max_calls: int = 4  # per completion; later blocks stay plain text
    timeout_s: float = 5.0  # wall-clock seconds per call, sandbox start-up included
    max_output_chars: int = 512  # longer output keeps its first and last characters

    def run(self, code: str) -> ToolCall:
        """What the code printed (stdout, then stderr's tail on an error), shortened to
        max_output_chars; a timeout or a sandbox failure is reported as text, never raised.
        The call is ok when the program exited cleanly within the time limit."""
        try:
            outcome = run_python("main.py", {"main.py": code}, limits=Limits(wall_s=self.timeout_s))
        except OSError as e:
            return ToolCall(code, f"(the sandbox could not start: {e})", False)
        out = outcome.stdout.decode("utf-8", "replace")
        if outcome.timed_out:
            out += f"(timed out after {self.timeout_s:g} s)"
        elif outcome.returncode:
            # The traceback's last lines name the error; the sandbox's own paths add nothing.
            out += "\n".join(outcome.stderr.decode("utf-8", "replace").strip().splitlines()[-3:])
        return ToolCall(code, self._shorten(out.strip()), not outcome.timed_out and outcome.returncode == 0)

    def result(self, output: str) -> str:
        """The text forced after a call: the output in its own fenced block."""
        return f"\n```output\n{output}\n```\n"

    def _shorten(self, text: str) -> str:
        if len(text) <= self.max_output_chars:
            return text
        keep = self.max_output_chars // 2
        return f"{text[:keep]}\n...({len(text) - 2 * keep} characters cut)...\n{text[-keep:]}"


@dataclass(frozen=True)
class Calculator(_Blocks):
    """Evaluate the model's ``<calc>expression</calc>`` in-process and write the value back."""

    name: ClassVar[str] = "calculator"
    open: str = CALCULATOR_CALL[0]  # starts a call
    close: str = CALCULATOR_CALL[1]  # ends it: the text in between is the expression
    max_calls: int = 4  # per completion; later blocks stay plain text
    digits: int = 12  # significant digits of a value that is not a whole number

    def run(self, code: str) -> ToolCall:
        """The expression's value (a whole number exactly, else a decimal to `digits`
        significant digits), or "error: ..." for anything the evaluator refuses."""
        try:
            value = arithmetic(code)
        except ValueError as e:
            return ToolCall(code, f"error: {str(e).rpartition(': ')[2]}", False)
        if value.denominator == 1:
            return ToolCall(code, str(value.numerator), True)
        return ToolCall(code, f"{float(value):.{self.digits}g}", True)

    def result(self, output: str) -> str:
        return f"{CALCULATOR_OUTPUT[0]}{output}{CALCULATOR_OUTPUT[1]}"


def make_tool(name: str) -> Tool | None:
    """The tool a config or command line names: "calculator", "python", or "none" (None)."""
    if name == "none":
        return None
    for tool in (Calculator, PythonTool):
        if tool.name == name:
            return tool()
    raise ValueError(f"tool must be calculator, python or none; got {name!r}")


def tool_metrics(completions: Sequence, correct: Sequence[float], problems: Sequence | None = None) -> dict[str, float]:
    """Per-step tool metrics of a batch: calls per completion, the share of completions that call,
    the share of calls that ran cleanly, and accuracy with and without a call (NaN where no
    completion falls in a group). With problems whose meta has a "level" (e.g. easy/hard), the
    same again per level, under tools/<level>/..."""
    def summary(rows: list[int]) -> dict[str, float]:
        calls = [c for i in rows for c in completions[i].tool_calls]
        called = [i for i in rows if completions[i].tool_calls]
        plain = [i for i in rows if not completions[i].tool_calls]

        def share(xs):
            return sum(xs) / len(xs) if xs else float("nan")

        return {"calls_per_completion": share([len(completions[i].tool_calls) for i in rows]),
                "call_share": share([bool(completions[i].tool_calls) for i in rows]),
                "call_success": share([c.ok for c in calls]),
                "accuracy_with_call": share([correct[i] > 0.5 for i in called]),
                "accuracy_without_call": share([correct[i] > 0.5 for i in plain]),
                "accuracy": share([correct[i] > 0.5 for i in rows])}

    if len(completions) != len(correct):
        raise ValueError(f"{len(completions)} completions but {len(correct)} correctness values")
    out = {f"tools/{k}": v for k, v in summary(list(range(len(completions)))).items() if k != "accuracy"}
    levels: dict[str, list[int]] = {}
    for i, p in enumerate(problems or ()):
        level = getattr(p, "meta", {}).get("level")
        if level is not None:
            levels.setdefault(str(level), []).append(i)
    for level, rows in sorted(levels.items()):
        out.update({f"tools/{level}/{k}": v for k, v in summary(rows).items()})
    return out
