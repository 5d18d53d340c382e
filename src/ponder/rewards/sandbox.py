"""Run an untrusted Python script in a throw-away sandbox and collect what it did.

The parent side (`run_python`) makes a fresh temp directory, starts this same file as a launcher
in its own session (process group), feeds stdin, reads stdout/stderr incrementally under a size
cap, enforces a wall-clock deadline, and on every exit path kills the whole group and removes the
directory. The launcher side (`python sandbox.py CONFIG`, stdlib only, a fresh process so that no
unsafe work happens between fork and exec in a threaded parent) isolates itself with kernel
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
to get the same namespaces and the same new root; it cannot switch to a fresh uid there, so
RLIMIT_NPROC is set above the user's current process count. Whatever could not be set up is
listed in `Outcome.missing`, with what the program can then reach, instead of being silently
skipped.
"""

from __future__ import annotations

import dataclasses
import errno
import json
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

# Kernel constants (linux/sched.h, linux/mount.h, linux/prctl.h).
CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER = 0x00020000, 0x08000000, 0x10000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND = 32, 1024, 2048, 4096
MS_REC, MS_PRIVATE, MS_RELATIME, MS_STRICTATIME = 1 << 14, 1 << 18, 1 << 21, 1 << 24
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38

MNT_DETACH = 2
# pivot_root has no libc wrapper; its syscall number per architecture (asm/unistd.h)
_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}
_LOCKED_FLAGS = ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC),
                 (os.ST_NOATIME, MS_NOATIME), (os.ST_NODIRATIME, MS_NODIRATIME),
                 (os.ST_RELATIME, MS_RELATIME))

WORK = "/tmp/work"  # where the work directory appears inside the mount namespace
OLD_ROOT = "/.old-root"  # where the host's root waits, in the new root, until it is detached
# What the new root shows of the host besides the interpreter: programs and shared libraries
# (/bin, /lib... are often links into /usr), and the harmless character devices.
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
DEVICES = ("null", "zero", "full", "random", "urandom")
FULL_ISOLATION = ("network", "ipc", "pid", "mount", "minimal filesystem", "unprivileged uid")
SETUP_FAILED = 125  # launcher exit code when the sandbox could not be entered at all


# ----------------------------------------------------------------------------- parent side

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
            # the caller's own Python (a venv's packages included), wherever it is installed
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
            [sys.executable, "-I", "-S", os.path.abspath(__file__), json.dumps(config)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            cwd=workdir, env=run_env, start_new_session=True, pass_fds=(status_w, report_w))
        for fd in (status_w, report_w):
            os.close(fd)
            fds.remove(fd)
        streams = _pump(proc, stdin, {"out": proc.stdout.fileno(), "err": proc.stderr.fileno(),
                                      "status": status_r, "report": report_r},
                        start + limits.wall_s, limits.output_bytes)
        wall = time.monotonic() - start
        info = _status(streams["status"])
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


def _status(data: bytes) -> dict:
    """The launcher's status lines merged into one dict (a line cut off by a kill is skipped)."""
    info = {}
    for line in data.splitlines():
        try:
            info.update(json.loads(line))
        except ValueError:
            pass
    return info


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


# ----------------------------------------------------------------------------- launcher side

def _libc():
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)

    def check(result, name):
        if result != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"{name}: {os.strerror(err)}")
    return libc, check


def _unshare(flags: int) -> None:
    libc, check = _libc()
    check(libc.unshare(flags), "unshare")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    libc, check = _libc()
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    check(libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def _prctl(option: int, value: int) -> None:
    libc, check = _libc()
    check(libc.prctl(option, value, 0, 0, 0), "prctl")


def _enter_user_namespace() -> None:
    """Unprivileged route to namespaces: become a non-root uid inside a new user namespace.

    The launcher keeps capabilities in the namespace until it execs the script; the script's
    uid there is not 0, so exec drops them and the script cannot undo the mounts.
    """
    uid, gid = os.getuid(), os.getgid()
    _unshare(CLONE_NEWUSER)
    for name, text in (("setgroups", "deny"), ("uid_map", f"1000 {uid} 1"), ("gid_map", f"1000 {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)


def _minimal_view(workdir: str, reveal: list[str], uid: int | None, disk_mb: int) -> None:
    """Inside the new mount namespace: make a new root holding only what the interpreter needs
    and the work directory, and pivot into it. The old root stays at OLD_ROOT until the script's
    process has mounted its /proc (see _leave_old_root)."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing below propagates to the host
    host_work = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY)
    # The new root is a small tmpfs over the work directory's host path: a place that exists,
    # that nothing else needs, and that the host never sees mounted over (our namespace only).
    root = workdir
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
    try:
        for path in SYSTEM_DIRS:  # the shared libraries, the dynamic loader, /usr/bin
            if os.path.islink(path):
                os.symlink(os.readlink(path), root + path)
            elif os.path.isdir(path):
                _bind_read_only(path, root + path)
        for path in _reveal_targets(reveal):  # the interpreter, its standard library, its packages
            _bind_read_only(path, root + path)
        _make_dev(root)
        for name in ("proc", "tmp", OLD_ROOT.strip("/")):
            os.mkdir(os.path.join(root, name), 0o755)
        # the only writable place: a size-capped tmpfs holding a copy of the run's files, so
        # nothing the script writes reaches the host's disk
        work = root + WORK
        os.mkdir(work)
        owner = f",uid={uid},gid={uid}" if uid is not None else ""
        _mount("tmpfs", work, "tmpfs", MS_NOSUID | MS_NODEV, f"size={disk_mb}m,mode=700{owner}")
        for name in os.listdir(host_work):
            with open(name, "rb", opener=lambda p, fl: os.open(p, fl, dir_fd=host_work)) as src, \
                    open(os.path.join(work, name), "wb") as dst:
                dst.write(src.read())
        os.close(host_work)
        os.chdir(root)
        _pivot_root(".", "." + OLD_ROOT)
        os.chdir("/")
    except BaseException:
        _unmount(root)  # back to the host's view, so the caller can carry on without this one
        raise


def _reveal_targets(reveal: list[str]) -> list[str]:
    """The interpreter's directories to bind, each at its own path and at its real path (a venv
    reached through a symlink), leaving out what a directory bound before already shows (binds
    do not take submounts along: /usr/local on a mount of its own is bound by itself)."""
    shown = [os.path.realpath(d) for d in SYSTEM_DIRS if os.path.isdir(d)]
    targets: list[str] = []
    for path in sorted({q for p in reveal for q in (os.path.abspath(p), os.path.realpath(p))}):
        if os.path.isdir(path) and not any(_shows(d, path) for d in shown + targets):
            targets.append(path)
    return targets


def _shows(directory: str, path: str) -> bool:
    """Does a bind of `directory` show `path` (inside it, with no mount point between)?"""
    while path != directory:
        if os.path.ismount(path) or path == "/":
            return False
        path = os.path.dirname(path)
    return True


def _make_dev(root: str) -> None:
    """A /dev with the character devices programs use, a private /dev/shm and the fd links."""
    dev = root + "/dev"
    os.mkdir(dev, 0o755)
    for name in DEVICES:
        if os.path.exists(f"/dev/{name}"):
            open(os.path.join(dev, name), "w").close()
            _bind_read_only(f"/dev/{name}", os.path.join(dev, name), device=True)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, os.path.join(dev, name))
    os.mkdir(dev + "/shm")
    # private and small: multiprocessing needs it for semaphores
    _mount("tmpfs", dev + "/shm", "tmpfs", MS_NOSUID | MS_NODEV, "size=16m,mode=1777")


def _bind_read_only(source: str, target: str, device: bool = False) -> None:
    """Bind `source` (not its submounts) at `target`, read-only.

    The remount keeps the flags the source's mount already has: in a user namespace they are
    locked, and dropping one (nosuid, an atime mode) would make the remount fail."""
    if not os.path.exists(target):
        os.makedirs(target, 0o755)
    _mount(source, target, None, MS_BIND)
    st = os.statvfs(target).f_flag
    flags = sum(ms for st_flag, ms in _LOCKED_FLAGS if st & st_flag)
    if not st & (os.ST_NOATIME | os.ST_RELATIME):
        flags |= MS_STRICTATIME
    extra = 0 if device else MS_NOSUID | MS_NODEV
    _mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | flags | extra)


def _leave_old_root(mount_proc: bool) -> None:
    """In the script's process, before exec: mount its own /proc (in a user namespace the
    kernel allows that only while a full /proc is still mounted, here under the old root), then
    detach the old root and make the new one read-only."""
    if mount_proc:
        try:
            _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        except OSError:
            pass  # an empty /proc hides more, and nothing the harness needs lives there
    _unmount(OLD_ROOT)
    os.rmdir(OLD_ROOT)
    _mount(None, "/", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _pivot_root(new_root: str, put_old: str) -> None:
    import platform

    libc, check = _libc()
    number = _PIVOT_ROOT.get(platform.machine())
    if number is None:
        raise OSError(errno.ENOSYS, f"pivot_root: syscall number unknown on {platform.machine()}")
    check(libc.syscall(number, new_root.encode(), put_old.encode()), "pivot_root")


def _unmount(target: str) -> None:
    libc, check = _libc()
    check(libc.umount2(target.encode(), MNT_DETACH), f"umount {target}")


def _user_task_count(uid: int) -> int:
    count = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if os.stat(f"/proc/{pid}").st_uid == uid:
                    count += len(os.listdir(f"/proc/{pid}/task"))
            except OSError:
                pass
    return count


def _launch(config: dict) -> None:
    import resource

    status_fd = config["status_fd"]
    os.set_inheritable(status_fd, False)  # the script must not be able to forge our lines
    status = os.fdopen(status_fd, "w", buffering=1)
    isolation: list[str] = []
    missing: list[str] = []
    root = os.geteuid() == 0
    # counted here, while /proc is still the host's
    nproc = config["nproc"] + (0 if root else _user_task_count(os.getuid()))
    namespaces = root
    if not root:
        try:
            _enter_user_namespace()
            namespaces = True
        except OSError as e:
            missing.append(f"user namespace ({e.strerror}): no network, ipc, pid or mount isolation; "
                           "the program can read every file the user can")
    if namespaces:
        for flag, name in ((CLONE_NEWNET, "network"), (CLONE_NEWIPC, "ipc"),
                           (CLONE_NEWPID, "pid"), (CLONE_NEWNS, "mount")):
            try:
                _unshare(flag)
                isolation.append(name)
            except OSError as e:
                missing.append(f"{name} namespace ({e.strerror})")
    if "mount" in isolation:
        try:
            _minimal_view(config["workdir"], config["reveal"], config["uid"] if root else None,
                          config["disk_mb"])
            isolation.append("minimal filesystem")
        except OSError as e:
            missing.append(f"minimal filesystem ({e.strerror or e}): the program can read every file "
                           "the user can, and write where the user can")
    uid = config["uid"] if root else None
    if uid is not None:
        isolation.append("unprivileged uid")
    else:
        missing.append("unprivileged uid (not root): RLIMIT_NPROC is shared with the user's processes")
    workdir = WORK if "minimal filesystem" in isolation else config["workdir"]
    status.write(json.dumps({"isolation": isolation, "missing": missing}) + "\n")

    pid = os.fork()
    if pid == 0:
        try:
            if "minimal filesystem" in isolation:
                _leave_old_root(mount_proc="pid" in isolation)
            mb = 1 << 20
            # soft = hard: PID 1 of a namespace ignores SIGXCPU, so the limit acts by SIGKILL
            for res, value in ((resource.RLIMIT_AS, config["memory_mb"] * mb),
                               (resource.RLIMIT_CPU, config["cpu_s"]),
                               (resource.RLIMIT_NPROC, nproc),
                               (resource.RLIMIT_FSIZE, config["file_mb"] * mb),
                               (resource.RLIMIT_CORE, 0)):
                resource.setrlimit(res, (value, value))
            if uid is not None:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
            _prctl(PR_SET_NO_NEW_PRIVS, 1)
            _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # after setuid, which clears it
            os.chdir(workdir)
            env = dict(os.environ, HOME=workdir, TMPDIR=workdir)
            interpreter = config["interpreter"]
            os.execve(interpreter, [interpreter, "-I", config["script"]], env)
        except BaseException as e:  # noqa: BLE001 - report, never fall back into the launcher
            os.write(2, f"sandbox setup failed: {e!r}\n".encode())
            os._exit(SETUP_FAILED)
    status.write(json.dumps({"child": pid}) + "\n")
    _, wait_status, usage = os.wait4(pid, 0)
    status.write(json.dumps({"returncode": os.waitstatus_to_exitcode(wait_status),
                             "cpu_s": usage.ru_utime + usage.ru_stime}) + "\n")


if __name__ == "__main__":
    _launch(json.loads(sys.argv[1]))
