"""Run an untrusted Python script in a throw-away sandbox and collect what it did.

This side (`run_python`) makes a fresh temp directory, starts the launcher
(ponder.rewards.sandbox_launcher) in its own session (process group), feeds stdin, reads
stdout/stderr incrementally under a size cap, enforces a wall-clock deadline, and on every exit
path kills the whole group and removes the directory. The launcher isolates itself with kernel
mechanisms, then forks the script as PID 1 of a new PID namespace:

- new network namespace: no interface but a downed loopback, so no TCP/UDP anywhere, not even
  127.0.0.1, and no abstract Unix sockets of the host;
- new IPC namespace: no System V shared memory or message queues of the host;
- new PID namespace: the script sees only its own processes, and when it exits the kernel kills
  every process it left behind (even ones that called setsid());
- new mount namespace and a new root (pivot_root) that holds only what the interpreter needs:
  /usr and the /bin, /lib... links into it (programs, shared libraries, the dynamic loader), the
  interpreter's own installation (its prefix and base prefix: the standard library and the
  packages it can import), a few character devices (/dev/null, /dev/urandom...), a private
  16 MiB /dev/shm, the script's own /proc, and the only writable place, /tmp/work: a
  size-capped private tmpfs holding a copy of the run's files, so nothing the script writes
  reaches the host's disk. Everything else (the repository, data sets, /etc, /home, /root,
  other mounts, host Unix sockets) does not exist there; the old root is detached;
- an otherwise unused uid (random per run, so RLIMIT_NPROC counts only this run) with no groups
  and no_new_privs, since RLIMIT_NPROC does not bind root;
- rlimits: address space, CPU seconds, processes, file size, no core dumps;
- parent-death signal, so a killed launcher takes the script with it.

As root all of this applies. As another user the launcher tries an unprivileged user namespace
to get the same namespaces and the same new root; it cannot switch to a fresh uid there (the
kernel counts RLIMIT_NPROC per user namespace since Linux 5.14). Without a user namespace,
RLIMIT_NPROC is set above the user's current process count. Whatever could not be set up is
listed in `Outcome.missing`, with what the program can then reach, instead of being silently
skipped.
"""

from __future__ import annotations

import dataclasses
import marshal
import math
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from ponder.rewards import sandbox_launcher
from ponder.rewards.sandbox_launcher import FULL_ISOLATION, SETUP_FAILED, read_status

__all__ = ["FULL_ISOLATION", "SETUP_FAILED", "Limits", "Outcome", "run_python"]


@dataclasses.dataclass(frozen=True)
class Limits:
    """Resource limits for one run."""

    wall_s: float = 10.0  # wall-clock seconds, launcher start-up included
    cpu_s: int | None = None  # CPU seconds per process (RLIMIT_CPU); default: ceil(wall_s)
    memory_mb: int = 1024  # address space per process (RLIMIT_AS)
    nproc: int = 64  # processes and threads of the sandbox uid (RLIMIT_NPROC)
    output_bytes: int = 4 << 20  # stdout + stderr together; the run is killed beyond this
    file_mb: int = 16  # largest file the script may write (RLIMIT_FSIZE)
    disk_mb: int = 64  # size of the work directory (a private tmpfs; needs the mount namespace)


@dataclasses.dataclass
class Outcome:
    """What happened in one run. `returncode` is None when the run was killed by the parent."""

    returncode: int | None  # exit code, or -signal; None when killed for time or output
    stdout: bytes
    stderr: bytes
    report: bytes  # what the script wrote to fd $PONDER_REPORT_FD (capped like the output)
    timed_out: bool
    output_exceeded: bool
    cpu_s: float | None  # CPU time of the script's main process, when it exited by itself
    wall_s: float
    isolation: tuple[str, ...]  # which of FULL_ISOLATION were in force
    missing: tuple[str, ...]  # what could not be set up, each with the reason


def run_python(script: str, files: dict[str, str], stdin: bytes = b"",
               limits: Limits = Limits(), env: dict[str, str] | None = None) -> Outcome:
    """Run `python -I <script>` (a name in `files`) inside the sandbox and return its Outcome.

    `files` (name -> text) are written to a fresh work directory, which is the script's working
    directory, $HOME and $TMPDIR. `env` adds variables to a minimal environment. Never raises
    for anything the script does; raises OSError only when the parent cannot start a run.
    """
    workdir = tempfile.mkdtemp(prefix="ponder-sandbox-")
    proc = None
    fds: list[int] = []
    try:
        for name, text in files.items():
            with open(os.path.join(workdir, name), "w", encoding="utf-8") as f:
                f.write(text)
        uid = 1_000_000 + secrets.randbelow(1_000_000) if os.geteuid() == 0 else None
        if uid is not None:
            os.chown(workdir, uid, uid)
        status_r, status_w = os.pipe()
        report_r, report_w = os.pipe()
        fds += [status_r, status_w, report_r, report_w]
        config = {
            "workdir": workdir, "script": script, "uid": uid,
            # the caller's own Python, wherever it is installed: all the new root shows of it is
            # its prefix (a venv's packages), its base prefix (the standard library) and the
            # folder of the binary
            "interpreter": sys.executable,
            "reveal": sorted({sys.prefix, sys.base_prefix, os.path.dirname(os.path.realpath(sys.executable))}),
            "status_fd": status_w, "report_fd": report_w,
            "memory_mb": limits.memory_mb, "nproc": limits.nproc, "file_mb": limits.file_mb,
            "disk_mb": limits.disk_mb,
            "cpu_s": limits.cpu_s or max(1, math.ceil(limits.wall_s)),
        }
        run_env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
                   "PONDER_REPORT_FD": str(report_w), **(env or {})}
        start = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", os.path.abspath(sandbox_launcher.__file__),
             marshal.dumps(config).hex()],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            cwd=workdir, env=run_env, start_new_session=True, pass_fds=(status_w, report_w))
        for fd in (status_w, report_w):
            os.close(fd)
            fds.remove(fd)
        streams = _pump(proc, stdin, {"out": proc.stdout.fileno(), "err": proc.stderr.fileno(),
                                      "status": status_r, "report": report_r},
                        start + limits.wall_s, limits.output_bytes)
        wall = time.monotonic() - start
        info = read_status(streams["status"])
        if "child" in info and "returncode" not in info:
            _kill_script(proc, info["child"])
        _kill_group(proc)
        return Outcome(
            returncode=info.get("returncode") if not (streams["timed_out"] or streams["exceeded"]) else None,
            stdout=streams["out"], stderr=streams["err"], report=streams["report"],
            timed_out=streams["timed_out"], output_exceeded=streams["exceeded"],
            cpu_s=info.get("cpu_s"), wall_s=wall,
            isolation=tuple(info.get("isolation", ())),
            missing=tuple(info.get("missing", ("launcher did not report its isolation",))))
    finally:
        if proc is not None:
            _kill_group(proc)
            for f in (proc.stdin, proc.stdout, proc.stderr):
                try:
                    f.close()
                except OSError:
                    pass
        for fd in fds:
            os.close(fd)
        shutil.rmtree(workdir, ignore_errors=True)


def _pump(proc, stdin: bytes, readers: dict[str, int], deadline: float, cap: int) -> dict:
    """Feed stdin and read every pipe until all close, the deadline passes or output exceeds cap."""
    sel = selectors.DefaultSelector()
    for name, fd in readers.items():
        sel.register(fd, selectors.EVENT_READ, name)
    stdin_fd = proc.stdin.fileno()
    if stdin:
        os.set_blocking(stdin_fd, False)
        sel.register(stdin_fd, selectors.EVENT_WRITE, "in")
    else:
        proc.stdin.close()
    chunks: dict[str, list[bytes]] = {name: [] for name in readers}
    total, pos = 0, 0
    timed_out = exceeded = False
    grace_end = None  # set once the launcher has exited: leftover writers get a moment, no more
    while sel.get_map():
        now = time.monotonic()
        if now >= deadline:
            timed_out = True
            break
        if grace_end is None and _exited(proc.pid):
            _kill_group(proc, reap=False)
            grace_end = now + 1.0
        if grace_end is not None and now >= grace_end:
            break
        for key, _ in sel.select(timeout=min(deadline - now, 0.1)):
            if key.data == "in":
                try:
                    pos += os.write(stdin_fd, stdin[pos:pos + 65536])
                except (BrokenPipeError, BlockingIOError) as e:
                    if isinstance(e, BlockingIOError):
                        continue
                    pos = len(stdin)
                if pos >= len(stdin):
                    sel.unregister(stdin_fd)
                    proc.stdin.close()
                continue
            data = os.read(key.fd, 65536)
            if not data:
                sel.unregister(key.fd)
                continue
            chunks[key.data].append(data)
            total += len(data)
            if total > cap:
                exceeded = True
                break
        if exceeded:
            break
    sel.close()
    out = {name: b"".join(parts) for name, parts in chunks.items()}
    return {**out, "timed_out": timed_out and not exceeded, "exceeded": exceeded}


def _exited(pid: int) -> bool:
    """True once `pid` has exited, without reaping it (so its pid, our group id, stays reserved)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _kill_group(proc, reap: bool = True) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # start_new_session made the launcher's pid the group id
    except (ProcessLookupError, PermissionError):
        pass
    if reap:
        proc.wait()


def _kill_script(proc, pid: int) -> None:
    """Kill the script (PID 1 of its namespace, so the kernel kills everything it started) and
    let the launcher reap it. Killing the launcher first would leave the script a zombie for
    the host's init to reap, which some container inits never do."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return  # already reaped
    try:
        # pids are reused: act only if this is still the launcher's child
        with open(f"/proc/{pid}/status") as f:
            ppid = next(int(line.split()[1]) for line in f if line.startswith("PPid:"))
        if ppid == proc.pid:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            proc.wait(timeout=5)
    except (OSError, StopIteration, subprocess.TimeoutExpired):
        pass  # _kill_group follows
    finally:
        os.close(pidfd)
