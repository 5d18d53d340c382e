"""The code verifier: grading against check()/cases, the sandbox against hostile programs, HumanEval."""

from __future__ import annotations

import gzip
import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from ponder.rewards.code import (code_accuracy, compare_output, extract_program,
                                 grade_record, grade_records, run_program)
from ponder.rewards.sandbox import Limits, run_python

REPO = Path(__file__).resolve().parents[1]
HUMANEVAL = REPO.parent / "shared" / "data" / "HumanEval.jsonl.gz"
QUICK = Limits(wall_s=4)

ADD_TEST = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"
ADD_OK = "def add(a, b):\n    return a + b\n"
SUM_PROGRAM = "a, b = map(int, input().split())\nprint(a + b)\nprint('done')\n"


def _isolation():
    """What the sandbox achieves on this machine (one trivial run)."""
    return run_python("main.py", {"main.py": "pass"})


def _require(*parts: str) -> None:
    outcome = _isolation()
    lacking = [p for p in parts if p not in outcome.isolation]
    if lacking:
        pytest.skip(f"sandbox cannot provide {lacking} here: {'; '.join(outcome.missing)}")


def _processes_named(marker: str) -> list[int]:
    """Host pids whose command line or thread name contains marker."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            text = Path(f"/proc/{pid}/cmdline").read_bytes() + Path(f"/proc/{pid}/comm").read_bytes()
        except OSError:
            continue
        if marker.encode() in text:
            found.append(int(pid))
    return found


# ----------------------------------------------------------------------------- grading

def test_humaneval_style_pass_and_fail():
    ok = run_program(ADD_OK, test=ADD_TEST, entry_point="add")
    assert (ok.correct, ok.reason, ok.detail) == (True, "passed", "")
    wrong = run_program("def add(a, b):\n    return a - b\n", test=ADD_TEST, entry_point="add")
    assert (wrong.correct, wrong.reason) == (False, "failed")
    assert "AssertionError" in wrong.detail
    missing = run_program("def plus(a, b):\n    return a + b\n", test=ADD_TEST, entry_point="add")
    assert (missing.correct, missing.reason) == (False, "crashed")
    assert "'add'" in missing.detail
    syntax = run_program("def add(a, b):\n    return a +\n", test=ADD_TEST, entry_point="add")
    assert (syntax.reason, syntax.correct) == ("crashed", False) and "SyntaxError" in syntax.detail


def test_exiting_early_or_forging_the_report_does_not_pass():
    # sys.exit(0) before the tests run, and a fake "done" written to every plausible fd
    early = run_program("import sys\nsys.exit(0)\n", test=ADD_TEST, entry_point="add")
    assert (early.correct, early.reason) == (False, "failed")
    forged = ("import os, json\nfor fd in range(3, 64):\n    try:\n"
              "        os.write(fd, (json.dumps({'stage': 'done'}) + '\\n').encode())\n"
              "    except OSError:\n        pass\nos._exit(0)\n")
    result = run_program(forged, test=ADD_TEST, entry_point="add")
    assert (result.correct, result.reason) == (False, "failed")
    # the nonce is neither in the environment nor in a file the program can read
    snoop = ("import glob, re\nseen = open('/proc/self/environ', 'rb').read().decode(errors='replace')\n"
             "seen += ''.join(open(p, errors='replace').read() for p in glob.glob('*'))\n"
             "assert not re.search('[0-9a-f]{32}', seen), seen\n")
    assert run_program(snoop, cases=[{"input": "", "output": ""}]).correct


def test_cases_compare_lines_and_line_counts():
    ok = [{"input": "1 2\n", "output": "3\ndone\n"}, {"input": "5 5", "output": "10   \ndone\n\n\n"}]
    assert run_program(SUM_PROGRAM, cases=ok).correct
    # a missing trailing line fails (zip() would pass it), and so does an extra one
    short = run_program(SUM_PROGRAM, cases=[{"input": "1 2\n", "output": "3\ndone\nbye\n"}])
    assert (short.correct, short.reason) == (False, "failed") and "3 lines" in short.detail
    extra = run_program(SUM_PROGRAM, cases=[{"input": "1 2\n", "output": "3\n"}])
    assert (extra.correct, extra.reason) == (False, "failed")
    second = run_program(SUM_PROGRAM, cases=[ok[0], {"input": "2 2\n", "output": "5\ndone\n"}])
    assert not second.correct and second.detail.startswith("case 1:") and "'5'" in second.detail


def test_compare_output_rules():
    assert compare_output("a  \r\nb\n\n\n", "a\nb") == (True, "")
    assert not compare_output("a\nb", "a\nb\nc")[0]
    assert not compare_output("a\nb\nc", "a\nb")[0]
    assert not compare_output(" a", "a")[0]  # leading whitespace is significant
    assert not compare_output("a\n\nb", "a\nb")[0]  # inner blank lines are significant


def test_cases_exit_status_and_threads():
    crash = run_program("import sys\nprint(1)\nsys.exit(3)\n", cases=[{"input": "", "output": "1\n"}])
    assert (crash.correct, crash.reason) == (False, "crashed")
    clean_exit = run_program("print(1)\nexit()\n", cases=[{"input": "", "output": "1\n"}])
    assert clean_exit.correct
    # the big-stack-thread idiom: the main module returns at once, the thread prints later
    threaded = ("import threading, time\ndef main():\n    time.sleep(0.2)\n    print(int(input()) * 2)\n"
                "threading.stack_size(1 << 26)\nthreading.Thread(target=main).start()\n")
    assert run_program(threaded, cases=[{"input": "21\n", "output": "42\n"}]).correct


def test_plain_program_passes_when_it_runs_to_the_end():
    assert run_program("import sys\nprint('x')\nsys.exit(0)\n").correct
    assert run_program("import os\nos._exit(0)\n").correct
    assert run_program("import sys\nsys.exit('bad input')\n").reason == "crashed"
    assert run_program("import os\nos._exit(4)\n").reason == "crashed"
    with pytest.raises(ValueError, match=r"'cases\[0\]\.input'"):
        run_program("print(1)", cases=[{"output": "1"}])


def test_large_stdin_is_fed_without_deadlock():
    data = "x" * (3 << 20)
    reads = run_program("import sys\nprint(len(sys.stdin.read()))\n",
                        cases=[{"input": data, "output": f"{len(data)}\n"}])
    assert reads.correct, reads
    ignores = run_program("print('hi')\n", cases=[{"input": data, "output": "hi\n"}])
    assert ignores.correct, ignores


def test_program_can_write_in_its_own_directory():
    program = ("import os, tempfile\nopen('scratch.txt', 'w').write('ok')\n"
               "with tempfile.NamedTemporaryFile('w') as f:\n    f.write('x')\n"
               "print(open('scratch.txt').read())\n")
    assert run_program(program, cases=[{"input": "", "output": "ok\n"}]).correct


# ----------------------------------------------------------------------------- records

def test_grade_record_errors_name_the_field():
    with pytest.raises(ValueError, match="'program'"):
        grade_record({"test": ADD_TEST, "entry_point": "add"})
    with pytest.raises(ValueError, match="'entry_point'"):
        grade_record({"program": ADD_OK, "test": ADD_TEST})
    with pytest.raises(ValueError, match=r"'cases\[1\]\.output'"):
        grade_record({"program": SUM_PROGRAM, "cases": [{"input": "", "output": ""}, {"input": ""}]})
    with pytest.raises(ValueError, match="'cases'"):
        grade_record({"program": SUM_PROGRAM, "cases": []})
    with pytest.raises(ValueError, match="either 'test'"):
        grade_record({"program": SUM_PROGRAM})
    with pytest.raises(ValueError, match="record 1: field 'program'"):
        grade_records([{"program": ADD_OK, "test": ADD_TEST, "entry_point": "add"}, {"program": 3}])


def test_grade_records_keeps_order_and_carries_on_after_hostile_ones():
    records = [
        {"program": ADD_OK, "test": ADD_TEST, "entry_point": "add"},
        {"program": "while True:\n    pass\n", "test": ADD_TEST, "entry_point": "add"},
        {"program": "x = bytearray(8 << 30)\n", "test": ADD_TEST, "entry_point": "add"},
        {"program": SUM_PROGRAM, "cases": [{"input": "1 1", "output": "2\ndone"}]},
        {"program": "def add(a, b):\n    return 0\n", "test": ADD_TEST, "entry_point": "add"},
    ]
    results = grade_records(records, workers=3, limits=Limits(wall_s=3))
    assert [r.reason for r in results] == ["passed", "timed out", "memory", "passed", "failed"]
    assert [r.correct for r in results] == [True, False, False, True, False]


# ----------------------------------------------------------------------------- hostile programs

def test_infinite_loop_times_out_on_wall_clock():
    start = time.monotonic()
    result = run_program("import time\nwhile True:\n    time.sleep(0.01)\n", limits=Limits(wall_s=1.5))
    assert (result.correct, result.reason) == (False, "timed out")
    assert time.monotonic() - start < 6


def test_busy_loop_hits_the_cpu_limit():
    result = run_program("while True:\n    pass\n", limits=Limits(wall_s=20, cpu_s=1))
    assert (result.correct, result.reason) == (False, "timed out")
    assert "CPU" in result.detail


def test_memory_bomb():
    grow = "chunks = []\nwhile True:\n    chunks.append(bytearray(16 << 20))\n"
    for program in ("x = ' ' * (8 << 30)\n", grow):
        # a small address space keeps the growing bomb's page-filling quick on a busy machine
        result = run_program(program, test=ADD_TEST, entry_point="add",
                             limits=Limits(wall_s=15, memory_mb=256))
        assert (result.correct, result.reason) == (False, "memory"), result


def test_fork_bomb_is_contained_and_leaves_nothing_behind():
    _require("pid", "unprivileged uid")
    marker = "pb" + secrets.token_hex(5)
    # name every process of the bomb so the host can look for survivors
    bomb = (f"import ctypes, os\nctypes.CDLL(None).prctl(15, b'{marker}', 0, 0, 0)\n"
            "while True:\n    os.fork()\n")
    result = run_program(bomb, test=ADD_TEST, entry_point="add", limits=QUICK)
    assert not result.correct and result.reason in ("blocked", "timed out"), result
    stubborn = bomb.replace("    os.fork()\n", "    try:\n        os.fork()\n    except OSError:\n        pass\n")
    result = run_program(stubborn, test=ADD_TEST, entry_point="add", limits=Limits(wall_s=2))
    assert (result.correct, result.reason) == (False, "timed out"), result
    assert _processes_named(marker) == []
    assert run_program(ADD_OK, test=ADD_TEST, entry_point="add").correct  # the caller carries on


def test_network_is_unreachable_even_on_localhost():
    _require("network")
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.setblocking(False)
    port = server.getsockname()[1]
    try:
        for address in (f"('127.0.0.1', {port})", "('1.1.1.1', 80)", "('example.com', 80)"):
            program = f"import socket\nsocket.create_connection({address}, timeout=2).sendall(b'x')\n"
            result = run_program(program, test=ADD_TEST, entry_point="add", limits=QUICK)
            assert (result.correct, result.reason) == (False, "blocked"), (address, result)
        with pytest.raises(BlockingIOError):
            server.accept()  # nothing ever connected
    finally:
        server.close()


def test_writes_outside_the_work_directory_are_refused():
    _require("minimal filesystem")
    name = f"ponder-escape-{secrets.token_hex(4)}"
    targets = [Path("/tmp") / name, REPO / name, Path("/var/tmp") / name]
    try:
        for target in targets:
            program = f"open({str(target)!r}, 'w').write('escaped')\n"
            result = run_program(program, test=ADD_TEST, entry_point="add", limits=QUICK)
            # /tmp is there but read-only; the others are not there at all
            refused = result.reason == "blocked" or "FileNotFoundError" in result.detail
            assert not result.correct and refused, (target, result)
            assert not target.exists()
    finally:
        for target in targets:
            target.unlink(missing_ok=True)


def test_filling_the_disk_stops_at_the_work_directory_size():
    _require("minimal filesystem")
    fill = "import os\nfor i in range(1000):\n    open(f'f{i}', 'wb').write(b'x' * (4 << 20))\n"
    result = run_program(fill, limits=Limits(wall_s=20, disk_mb=32))
    assert (result.correct, result.reason) == (False, "blocked"), result
    assert "No space left" in result.detail
    one_big = "open('big', 'wb').write(b'x' * (40 << 20))\n"
    result = run_program(one_big, limits=Limits(wall_s=20, file_mb=8))
    assert (result.correct, result.reason) == (False, "blocked"), result


def test_gigabytes_of_output_are_cut_off():
    for stream in ("stdout", "stderr"):
        start = time.monotonic()
        program = f"import sys\nwhile True:\n    sys.{stream}.write('x' * (1 << 20))\n"
        result = run_program(program, limits=Limits(wall_s=30, output_bytes=2 << 20))
        assert (result.correct, result.reason) == (False, "blocked"), result
        assert "output exceeded" in result.detail
        assert time.monotonic() - start < 10


def test_background_children_die_with_the_program():
    _require("pid")
    marker = "bg" + secrets.token_hex(5)
    sleeper = f"[sys.executable, '-c', 'import time; time.sleep(60)', '{marker}']"
    spawn = ("import subprocess, sys, os\n"
             f"subprocess.Popen({sleeper}, start_new_session=True)\n"
             "if os.fork() == 0:\n"  # a double-forked daemon as well
             f"    os.setsid()\n    os.execv(sys.executable, {sleeper})\n")
    finished = run_program(spawn + ADD_OK, test=ADD_TEST, entry_point="add")
    assert finished.correct  # spawning is allowed; surviving is not
    assert _processes_named(marker) == []
    hung = run_program(spawn + "while True:\n    pass\n", limits=Limits(wall_s=1.5))
    assert hung.reason == "timed out"
    assert _processes_named(marker) == []


# ----------------------------------------------------------------------------- reward function

def test_code_accuracy_reward():
    header = 'def add(a, b):\n    """Add two numbers."""\n'
    problem = SimpleNamespace(prompt=header, kind="code", answer="",
                              meta={"test": ADD_TEST, "entry_point": "add"})
    body_only = "    return a + b\n"
    fenced = "Here it is:\n```python\ndef add(a, b):\n    return b - a\n```\nBetter:\n```python\n" + ADD_OK + "```\n"
    assert code_accuracy(header, body_only, problem) == 1.0
    assert code_accuracy(header, fenced, problem) == 1.0
    assert code_accuracy(header, "```python\ndef add(a, b):\n    return a * b\n```", problem) == 0.0
    cases = SimpleNamespace(prompt="sum", kind="code", answer="",
                            meta={"cases": [{"input": "2 2", "output": "4\ndone"}]})
    assert code_accuracy("sum", f"```py\n{SUM_PROGRAM}```", cases) == 1.0
    math = SimpleNamespace(prompt="1+1?", kind="math", answer="2", meta={"subject": "x"})
    assert code_accuracy("1+1?", "2", math) is None
    assert extract_program("no fence at all") == "no fence at all"


# ----------------------------------------------------------------------------- HumanEval

def _humaneval() -> list[dict]:
    if not HUMANEVAL.exists():
        pytest.skip(f"HumanEval not found at {HUMANEVAL} (public test set; not part of the repository)")
    with gzip.open(HUMANEVAL, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def test_humaneval_canonical_solutions_pass_and_broken_ones_fail():
    problems = _humaneval()
    assert len(problems) == 164
    good = [{"program": p["prompt"] + p["canonical_solution"], "test": p["test"],
             "entry_point": p["entry_point"]} for p in problems]
    broken = [dict(g, program=p["prompt"] + "    return None\n") for g, p in zip(good, problems)]
    results = grade_records(good + broken, workers=4)
    failures = [(p["task_id"], r) for p, r in zip(problems, results[:164]) if not r.correct]
    assert failures == []
    accepted = [p["task_id"] for p, r in zip(problems, results[164:]) if r.correct]
    assert accepted == []
    assert {r.reason for r in results[164:]} <= {"failed", "crashed"}


# ----------------------------------------------------------------------------- what a program can see

# Opens each path and reports "read" or the errno's name; also tries the network.
_PROBE = r"""
import errno, json, socket, sys
seen = {}
for path in json.loads(sys.argv[1] if len(sys.argv) > 1 else open("paths.json").read()):
    try:
        with open(path, "rb") as f:
            f.read(1)
        seen[path] = "read"
    except OSError as e:
        seen[path] = errno.errorcode.get(e.errno, str(e.errno))
try:
    socket.create_connection(("1.1.1.1", 80), timeout=2)
    seen["network"] = "connected"
except OSError as e:
    seen["network"] = errno.errorcode.get(e.errno, str(e.errno))
print(json.dumps(seen))
"""


def _probe(paths: list[str]) -> tuple[dict, object]:
    outcome = run_python("probe.py", {"probe.py": _PROBE, "paths.json": json.dumps(paths)})
    assert outcome.returncode == 0, outcome
    return json.loads(outcome.stdout), outcome


def test_the_program_sees_only_what_the_interpreter_needs(tmp_path):
    """The repository, a data set beside it, a private file elsewhere and /etc/passwd are all
    out of sight; the standard library and the program's own files are not."""
    _require("minimal filesystem")
    dataset = tmp_path / "private.jsonl"
    dataset.write_text('{"prompt": "2+2", "answer": "4"}\n')
    hidden = [REPO / "README.md", REPO / "src" / "ponder" / "rewards" / "code.py", dataset,
              Path("/etc/passwd")] + [p for p in (HUMANEVAL,) if p.exists()]
    for path in hidden:
        path.read_bytes()  # readable from outside, so only the sandbox can be hiding it
    seen, _ = _probe([str(p) for p in hidden] + [json.__file__, "paths.json"])
    assert {str(p): seen[str(p)] for p in hidden} == {str(p): "ENOENT" for p in hidden}
    assert seen[json.__file__] == "read" and seen["paths.json"] == "read"


# ----------------------------------------------------------------------------- without root

_AS_USER = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from ponder.rewards import sandbox
paths = json.loads(sys.argv[2])
outside = {}
for path in paths:  # what the user can read without the sandbox
    try:
        open(path, "rb").close()
        outside[path] = "read"
    except OSError as e:
        outside[path] = e.strerror
o = sandbox.run_python("probe.py", {"probe.py": sys.argv[3], "paths.json": json.dumps(paths)})
print(json.dumps({"isolation": o.isolation, "missing": o.missing, "stdout": o.stdout.decode(),
                  "stderr": o.stderr.decode(), "outside": outside}))
"""


def test_without_root_the_sandbox_hides_the_same_files_and_says_what_it_lacks():
    """As an ordinary user: the same files are out of sight (through a user namespace), or the
    result says they are not; and there is no fresh uid to switch to, which it says too. The
    user runs a copy of the sandbox module, so the repository may sit where only root can read."""
    if os.geteuid() != 0:
        pytest.skip("needs root to start a run as an ordinary user")
    # an interpreter an ordinary user can run (the venv's may sit under /root)
    python = next((p for p in ("/usr/bin/python3", "/usr/local/bin/python3") if os.access(p, os.X_OK)), None)
    if python is None or subprocess.run([python, "-c", "import sys; assert sys.version_info >= (3, 10)"]).returncode:
        pytest.skip("no system Python >= 3.10 for an ordinary user")
    # /tmp itself, not tmp_path: the user must be able to reach the folder (pytest's is root-only)
    shared = Path(tempfile.mkdtemp(prefix="ponder-user-", dir="/tmp"))
    try:
        package = shared / "ponder" / "rewards"  # the sandbox's two modules, nothing else of ponder
        package.mkdir(parents=True)
        for name in ("sandbox.py", "sandbox_launcher.py"):
            shutil.copy(REPO / "src" / "ponder" / "rewards" / name, package / name)
        for folder in (package.parent, package):
            (folder / "__init__.py").touch()
        secret = shared / "private.jsonl"
        secret.write_text('{"prompt": "2+2", "answer": "4"}\n')
        for path in shared.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        shared.chmod(0o755)
        paths = [str(secret), "/etc/passwd", str(REPO / "README.md")]
        done = subprocess.run([python, "-I", "-c", _AS_USER, str(shared), json.dumps(paths), _PROBE],
                              user=65533, group=65533, extra_groups=[], cwd="/", capture_output=True,
                              text=True, timeout=60)
    finally:
        shutil.rmtree(shared)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert "unprivileged uid" not in report["isolation"]
    assert any("unprivileged uid" in m for m in report["missing"])
    assert report["outside"][str(secret)] == report["outside"]["/etc/passwd"] == "read"
    seen = json.loads(report["stdout"])
    if "minimal filesystem" in report["isolation"]:
        assert [seen[p] for p in paths] == ["ENOENT"] * 3, report
    else:
        assert any("can read every file the user can" in m for m in report["missing"]), report
    if "network" in report["isolation"]:
        assert seen["network"] == "ENETUNREACH", report
    else:
        assert any("network" in m for m in report["missing"]), report
