"""Execution traces of small integer Python programs, taken with Python's own tracing hook.

`trace(source)` runs a program under ``sys.settrace`` and returns one Frame per executed line of
it (functions included), in the order the lines finish, plus the final module variables. The
ground truth is what the interpreter did, not a second evaluator's opinion.

A frame is (line number, the integer variables that line changed in its own scope, the value
it returned if it was a ``return``). A function call adds a frame for its ``def`` line holding
the arguments, before the frames of its body; the calling line's own frame (with the variable
it assigned) follows them, since that line finishes last. One frame per executed line, not per
loop iteration, because line events are what the hook reports and they make control flow
visible (how often a loop header ran, which branch was taken) without a second notion of step.

Text form, used as a scratchpad and as a training target (see ponder.tasks.trace):
  frame  ``<line><name>=<value>,<name>=<value>`` names sorted, ``><value>`` appended for a return
  trace  frames joined by ``;``, e.g. ``1a=2;2i=0;3a=2;2i=1;3a=3;2;4b=6``

Caps (steps, absolute value of any variable) stop a program as soon as it passes one: a
TraceError, never a partial trace. Only ints are traced; a variable of any other type (functions
aside) is an error, since the trace format is for integer state.

Standard library only: the sandbox runs this same file as a script on a user's program,
``python tracer.py`` traces ./program.py and reports one JSON object (see `main`).
"""

from __future__ import annotations

import json
import os
import sys
import types
from dataclasses import dataclass

FILENAME = "<program>"  # code compiled under this name is traced; everything else is not
MAX_STEPS = 64  # frames a trace may have before the run is stopped
MAX_ABS = 999  # largest absolute value a variable may hold


class TraceError(ValueError):
    """The program passed a cap, raised, or held something other than integers."""


@dataclass(frozen=True)
class Frame:
    line: int  # 1-based line number in the program
    changes: tuple[tuple[str, int], ...] = ()  # (name, new value), sorted by name
    returned: int | None = None  # value of a ``return`` line

    def text(self) -> str:
        out = f"{self.line}" + ",".join(f"{name}={value}" for name, value in self.changes)
        return out if self.returned is None else f"{out}>{self.returned}"


def trace_text(frames: list[Frame]) -> str:
    return ";".join(frame.text() for frame in frames)


def _ints(scope: dict, max_abs: int) -> dict[str, int]:
    out = {}
    for name, value in scope.items():
        # dunders, a comprehension's hidden ".0" iterator, functions, modules, classes: not state
        if (name.startswith("__") or not name.isidentifier()
                or isinstance(value, (types.FunctionType, types.ModuleType, type))):
            continue
        if type(value) is not int:
            raise TraceError(f"variable {name} holds a {type(value).__name__}; traces cover integers only")
        if abs(value) > max_abs:
            raise TraceError(f"variable {name}={value} is beyond the value cap of {max_abs}")
        out[name] = value
    return out


def _changes(before: dict[str, int], after: dict[str, int]) -> tuple[tuple[str, int], ...]:
    return tuple(sorted((n, v) for n, v in after.items() if before.get(n, None) != v))


def trace(source: str, max_steps: int = MAX_STEPS, max_abs: int = MAX_ABS,
          builtins: dict | None = None) -> tuple[list[Frame], dict[str, int]]:
    """Run `source` under sys.settrace: (frames, final integer module variables).

    `builtins` replaces the program's builtins (the generator passes only ``range``); None
    keeps Python's. Raises TraceError past a cap, when the program raises, or on a non-int.
    """
    try:
        code = compile(source, FILENAME, "exec")
    except SyntaxError as e:
        raise TraceError(f"not a program: {e.msg} (line {e.lineno})") from e
    frames: list[Frame] = []
    failure: list[TraceError] = []  # set when a cap stops the run, even if the program swallows it
    pending: dict[int, tuple[int | None, dict[str, int]]] = {}  # id(frame) -> (line running, vars before it)

    def stop(error: TraceError):
        failure.append(error)
        sys.settrace(None)
        raise error

    def emit(frame: Frame) -> None:
        frames.append(frame)
        if len(frames) > max_steps:
            stop(TraceError(f"more than {max_steps} steps"))

    def local(frame, event, arg):
        try:
            now = _ints(frame.f_locals, max_abs)
        except TraceError as e:
            stop(e)
        line, before = pending.get(id(frame), (None, {}))
        if event in ("line", "return") and line is not None:
            returned = None
            if event == "return" and frame.f_code.co_name != "<module>" and arg is not None:
                if type(arg) is not int or abs(arg) > max_abs:
                    stop(TraceError(f"line {line} returns {arg!r}, not an integer within {max_abs}"))
                returned = arg
            emit(Frame(line, _changes(before, now), returned))
        if event == "line":
            pending[id(frame)] = (frame.f_lineno, now)
        elif event == "return":
            pending.pop(id(frame), None)
        return local

    def on_call(frame, event, arg):
        if frame.f_code.co_filename != FILENAME:
            return None
        try:
            args = _ints(frame.f_locals, max_abs) if frame.f_code.co_name != "<module>" else {}
        except TraceError as e:
            stop(e)
        if frame.f_code.co_name != "<module>":
            emit(Frame(frame.f_code.co_firstlineno, _changes({}, args)))
        pending[id(frame)] = (None, args)
        return local

    scope: dict = {"__name__": "__main__", "__builtins__": __builtins__ if builtins is None else builtins}
    sys.settrace(on_call)
    try:
        exec(code, scope)  # noqa: S102 - generated programs here; a user's run in the sandbox
    except Exception as e:  # a cap's stop (recorded in `failure`), or the program's own error
        if not failure:
            raise TraceError(f"the program raised {type(e).__name__}: {e}") from e
    finally:
        sys.settrace(None)
    if failure:
        raise failure[0]
    return frames, _ints(scope, max_abs)


def main() -> int:
    """Script entry (inside the sandbox): trace ./program.py under the caps in $PONDER_TRACE_CAPS
    ("steps,abs"), write one JSON line to the report fd ($PONDER_REPORT_FD, else stdout)."""
    with open("program.py", encoding="utf-8") as f:
        source = f.read()
    caps = [int(c) for c in os.environ.get("PONDER_TRACE_CAPS", f"{MAX_STEPS},{MAX_ABS}").split(",")]
    try:
        frames, final = trace(source, *caps)
        out = {"frames": [[f.line, [list(c) for c in f.changes], f.returned] for f in frames], "final": final}
    except TraceError as e:
        out = {"error": str(e)}
    os.write(int(os.environ.get("PONDER_REPORT_FD", "1")), (json.dumps(out) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
