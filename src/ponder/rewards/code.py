"""Code verifier: run a candidate Python program against tests in the sandbox and grade it.

Two kinds of tests:
- HumanEval style: `test` source defining `check(candidate)`, and `entry_point`, the name of the
  function under test; the program passes when `check(program[entry_point])` returns.
- stdin/stdout `cases`: a list of {"input": stdin, "output": expected stdout}; the program passes
  when, for every case, it exits cleanly and its output has the expected lines, compared after
  stripping trailing whitespace from each line and dropping trailing blank lines. Line counts
  must match: a missing last line is a failure.

Every run goes through `ponder.rewards.sandbox` (see there for what is isolated). The result's
`reason` is one of REASONS; anything the program does, hostile or not, ends in a CodeResult and
never in an exception for the caller.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import re
import secrets

from ponder.rewards.sandbox import FULL_ISOLATION, SETUP_FAILED, Limits, Outcome, run_python
from ponder.rewards.worker_pool import thread_map

REASONS = ("passed", "failed", "timed out", "memory", "crashed", "blocked")

# An OSError with one of these errnos means the sandbox refused something (network, writes
# outside the work directory, too many processes, too large a file, a full work directory).
_BLOCKED_ERRNOS = {errno.EPERM, errno.EACCES, errno.EROFS, errno.EAGAIN, errno.EFBIG, errno.ENOSPC,
                   errno.ENETDOWN, errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ECONNREFUSED,
                   errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT}
_BLOCKED_TYPES = {"gaierror", "herror"}  # name resolution: there is no network


@dataclasses.dataclass
class CodeResult:
    correct: bool
    reason: str  # one of REASONS
    detail: str = ""  # first failing case, the exception, or the tail of stderr
    isolation: str = "full"  # "full", or what the sandbox could not set up on this machine


# The harness is the script the sandbox runs. It executes the program (and the tests) in one
# namespace and reports how far it got on a private fd, tagged with a nonce, so that a program
# that merely exits with status 0 before the tests ran does not pass. A program that inspects
# the harness's memory could still forge a report: the sandbox contains programs, it does not
# make a cheating program unable to lie about its own tests.
_HARNESS = r'''
import json, os, sys, threading, traceback
_fd = int(os.environ.pop("PONDER_REPORT_FD"))
_pid = os.getpid()
with open("spec.json") as f:
    _spec = json.load(f)
os.unlink("spec.json")  # the nonce lives on only in this process (not in /proc/self/environ)
_nonce = _spec.pop("nonce")

def _report(stage, error=None):
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    if os.getpid() != _pid:  # a forked child finishing the program's code: not ours to report
        os._exit(1 if error else 0)
    msg = {"nonce": _nonce, "stage": stage}
    if error is not None:
        try:
            text = str(error)[:300]
        except Exception:
            text = "<unprintable>"
        msg.update(error=type(error).__name__, errno=getattr(error, "errno", None), message=text,
                   traceback="".join(traceback.format_exception(error))[-1500:])
        if isinstance(error, SystemExit):
            msg["code"] = error.code if isinstance(error.code, (int, type(None))) else 1
    try:
        os.write(_fd, (json.dumps(msg) + "\n").encode())
    finally:
        os._exit(0)

_stage = "program"
try:
    _ns = {"__name__": "__main__" if _spec["mode"] == "cases" else "__candidate__",
           "__builtins__": __builtins__}
    with open("program.py") as f:
        _source = f.read()
    sys.argv = ["program.py"]
    exec(compile(_source, "program.py", "exec"), _ns)
    if _spec["mode"] == "cases":
        for _t in threading.enumerate():  # programs that do their work in a big-stack thread
            if _t is not threading.main_thread() and not _t.daemon:
                _t.join()
    elif _spec["mode"] == "test":
        _stage = "test"
        with open("test.py") as f:
            exec(compile(f.read(), "test.py", "exec"), _ns)
        _stage = "check"
        _candidate = _ns.get(_spec["entry_point"])
        if _candidate is None:
            raise NameError(f"the program does not define {_spec['entry_point']!r}")
        _ns["check"](_candidate)
except BaseException as e:
    _report(_stage, e)
_report("done")
'''


def run_program(program: str, test: str | None = None, entry_point: str | None = None,
                cases: list[dict] | None = None, limits: Limits | None = None) -> CodeResult:
    """Run `program` against HumanEval-style `test` + `entry_point`, or against stdin/stdout
    `cases`; with neither, it passes when it runs to the end without an error."""
    limits = limits or Limits()
    if test is not None:
        if not entry_point:
            raise ValueError("entry_point is required with test")
        return _run_once(program, {"mode": "test", "entry_point": entry_point}, limits,
                         extra_files={"test.py": test})
    if cases is not None:
        result = CodeResult(True, "passed")
        for i, case in enumerate(_checked_cases(cases)):
            result = _run_once(program, {"mode": "cases"}, limits, stdin=case["input"],
                               expected=case["output"], case_index=i)
            if not result.correct:
                return result
        return result
    return _run_once(program, {"mode": "plain"}, limits)


def _run_once(program: str, spec: dict, limits: Limits, extra_files: dict | None = None,
              stdin: str = "", expected: str | None = None, case_index: int = 0) -> CodeResult:
    nonce = secrets.token_hex(16)
    files = {"harness.py": _HARNESS, "program.py": program,
             "spec.json": json.dumps({**spec, "nonce": nonce}), **(extra_files or {})}
    outcome = run_python("harness.py", files, stdin=stdin.encode(), limits=limits)
    isolation = _isolation_text(outcome)
    reason, detail = _classify(outcome, _harness_report(outcome, nonce), spec["mode"], limits)
    if reason == "passed" and expected is not None:
        ok, why = compare_output(outcome.stdout.decode("utf-8", "replace"), expected)
        if not ok:
            reason, detail = "failed", why
    if expected is not None and reason != "passed":
        detail = f"case {case_index}: {detail}"
    return CodeResult(reason == "passed", reason, detail, isolation)


def _harness_report(outcome: Outcome, nonce: str) -> dict | None:
    """The last report line carrying our nonce (lines from the program itself are ignored)."""
    found = None
    for line in outcome.report.decode("utf-8", "replace").splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if isinstance(msg, dict) and msg.get("nonce") == nonce:
            found = msg
    return found


def _classify(outcome: Outcome, report: dict | None, mode: str, limits: Limits) -> tuple[str, str]:
    if outcome.output_exceeded:
        return "blocked", f"output exceeded {limits.output_bytes} bytes"
    if outcome.timed_out:
        return "timed out", f"wall-clock limit of {limits.wall_s:g} s"
    stderr_tail = _tail(outcome.stderr)
    if report is not None:
        return _classify_error(report, mode) if report.get("error") else ("passed", "")
    # No report from the harness: the process ended some other way.
    rc = outcome.returncode
    if rc == SETUP_FAILED:
        return "crashed", f"sandbox setup failed or exit status {rc}: {stderr_tail}"
    if rc is not None and rc < 0:
        cpu_limit = limits.cpu_s or math.ceil(limits.wall_s)
        # The kernel enforces RLIMIT_CPU by SIGKILL at tick granularity, and reports the time
        # a little low under load: a SIGKILL near the limit is the limit.
        if rc == -9 and (outcome.cpu_s or 0) >= max(0.5 * cpu_limit, cpu_limit - 0.5):
            return "timed out", f"CPU limit of {cpu_limit:g} s"
        return "crashed", f"killed by signal {-rc} after {outcome.cpu_s or 0:.2f} s CPU" + (
            f": {stderr_tail}" if stderr_tail else "")
    if "MemoryError" in stderr_tail:
        return "memory", stderr_tail
    if mode != "test" and rc == 0:  # left through os._exit(0): its output still counts
        return "passed", ""
    if mode == "test":
        return "failed", f"exited with status {rc} before the tests finished" + (
            f": {stderr_tail}" if stderr_tail else "")
    return "crashed", f"exit status {rc}" + (f": {stderr_tail}" if stderr_tail else "")


def _classify_error(report: dict, mode: str) -> tuple[str, str]:
    name, stage = report["error"], report["stage"]
    detail = f"{name} in {stage}: {report.get('message', '')}".strip().rstrip(":")
    if name == "SystemExit":
        code = report.get("code")
        if mode == "test":
            return "failed", f"SystemExit({code}) in {stage}, before the tests finished"
        return ("passed", "") if code in (0, None) else ("crashed", f"SystemExit({code})")
    if name == "MemoryError":
        return "memory", detail
    if name == "AssertionError":
        return "failed", detail
    if name in _BLOCKED_TYPES or (report.get("errno") in _BLOCKED_ERRNOS and name != "FileNotFoundError"):
        return "blocked", detail
    lines = re.findall(r'File "program.py", line (\d+)', report.get("traceback", ""))
    return "crashed", detail + (f" (program.py line {lines[-1]})" if lines else "")


def compare_output(actual: str, expected: str) -> tuple[bool, str]:
    """Compare stdout line by line: trailing whitespace per line and trailing blank lines do not
    count; every other difference, a missing or extra line included, does."""
    got, want = _normalise(actual), _normalise(expected)
    for i, (g, w) in enumerate(zip(got, want)):
        if g != w:
            return False, f"line {i + 1}: expected {w[:80]!r}, got {g[:80]!r}"
    if len(got) != len(want):
        return False, f"expected {len(want)} lines, got {len(got)}"
    return True, ""


def _normalise(text: str) -> list[str]:
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _tail(data: bytes, n: int = 400) -> str:
    text = data.decode("utf-8", "replace").strip()
    return text[-n:]


def _isolation_text(outcome: Outcome) -> str:
    if set(FULL_ISOLATION) <= set(outcome.isolation) and not outcome.missing:
        return "full"
    return "partial: not isolated: " + "; ".join(outcome.missing)


# ----------------------------------------------------------------------------- records

def grade_record(record: dict, limits: Limits | None = None) -> CodeResult:
    """Grade one record: `program` plus either `test` and `entry_point`, or `cases`.
    Raises ValueError naming the missing or malformed field."""
    return run_program(**_parse_record(record), limits=limits)


def grade_records(records: list[dict], workers: int | None = None,
                  limits: Limits | None = None) -> list[CodeResult]:
    """Grade many records, `workers` at a time (default: the CPU count). Each run is its own
    sandboxed process, so threads suffice. A malformed record raises ValueError (naming its
    index and field) before anything runs."""
    parsed = []
    for i, record in enumerate(records):
        try:
            parsed.append(_parse_record(record))
        except ValueError as e:
            raise ValueError(f"record {i}: {e}") from None
    return thread_map(lambda kw: run_program(**kw, limits=limits), parsed, workers)


def _parse_record(record: dict) -> dict:
    if not isinstance(record, dict):
        raise ValueError(f"record must be a JSON object, got {type(record).__name__}")
    program = record.get("program")
    if not isinstance(program, str):
        raise ValueError("field 'program' is missing or not a string")
    if "test" in record:
        if not isinstance(record["test"], str):
            raise ValueError("field 'test' must be a string (Python source defining check(candidate))")
        entry = record.get("entry_point")
        if not isinstance(entry, str) or not entry.isidentifier():
            raise ValueError("field 'entry_point' is missing or not a function name (required with 'test')")
        return {"program": program, "test": record["test"], "entry_point": entry}
    if "cases" in record:
        return {"program": program, "cases": _checked_cases(record["cases"])}
    raise ValueError("record needs either 'test' and 'entry_point', or 'cases'")


def _checked_cases(cases) -> list[dict]:
    if not isinstance(cases, list) or not cases:
        raise ValueError("field 'cases' must be a non-empty list of {\"input\", \"output\"} objects")
    for i, case in enumerate(cases):
        if not isinstance(case, dict):
            raise ValueError(f"field 'cases[{i}]' must be an object with 'input' and 'output'")
        for key in ("input", "output"):
            if not isinstance(case.get(key), str):
                raise ValueError(f"field 'cases[{i}].{key}' is missing or not a string")
    return cases


# ----------------------------------------------------------------------------- reward

_FENCE = re.compile(r"```[ \t]*(?:python3?|py)[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


def extract_program(completion: str) -> str:
    """The last ```python fenced block of a completion, else the whole text."""
    blocks = _FENCE.findall(completion)
    return blocks[-1] if blocks else completion


def code_accuracy(prompt: str, completion: str, problem) -> float | None:
    """Reward: 1.0 when the program in `completion` passes the problem's tests, else 0.0; None
    when the problem carries no code tests (problem.meta has neither test + entry_point nor
    cases). For HumanEval-style problems the program runs after the problem's own prompt (its
    imports, helpers and function header), as HumanEval does: a completion may continue the body
    or give the whole function, which then replaces the header-only stub."""
    meta = getattr(problem, "meta", None) or {}
    program = extract_program(completion)
    if meta.get("test") is not None and meta.get("entry_point"):
        header = getattr(problem, "prompt", None) or prompt
        defines = re.search(rf"^def\s+{re.escape(meta['entry_point'])}\s*\(", program, re.MULTILINE)
        program = header + ("\n" if defines else "") + program
        result = run_program(program, test=meta["test"], entry_point=meta["entry_point"])
    elif meta.get("cases"):
        result = run_program(program, cases=_checked_cases(meta["cases"]))
    else:
        return None
    return 1.0 if result.correct else 0.0
