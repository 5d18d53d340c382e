"""The sandbox's launcher: `python -I -S sandbox_launcher.py CONFIG`, started by
ponder.rewards.sandbox.run_python in a fresh process (so that no unsafe work happens between fork
and exec in a threaded parent). It isolates itself with kernel mechanisms, then forks the script
as PID 1 of a new PID namespace and reports on a status pipe what it set up, the script's pid,
and how it ended. It imports only what it needs from the standard library: it runs once per
program, so its start-up is part of every program's cost.
"""

import errno
import marshal
import os
import sys

# Kernel constants (linux/sched.h, linux/mount.h, linux/prctl.h).
CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER = 0x00020000, 0x08000000, 0x10000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND = 32, 1024, 2048, 4096
MS_REC, MS_PRIVATE, MS_RELATIME, MS_STRICTATIME = 1 << 14, 1 << 18, 1 << 21, 1 << 24
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
SIGKILL = 9  # not signal.SIGKILL: the signal module imports enum, a cost on every start

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


# The config (argv[1]) and the status lines are marshal in hex, not JSON: this process starts
# once per program, and importing json (and re with it) is a sizeable part of its start-up.
def tell(status, message: dict) -> None:
    """One status line for the parent (read back by ponder.rewards.sandbox)."""
    status.write(marshal.dumps(message).hex() + "\n")


def read_status(data: bytes) -> dict:
    """The launcher's status lines merged into one dict (a line cut off by a kill is skipped)."""
    info = {}
    for line in data.splitlines():
        try:
            info.update(marshal.loads(bytes.fromhex(line.decode())))
        except (ValueError, EOFError, TypeError, UnicodeDecodeError):
            pass
    return info


_LIBC = None


def _libc():
    """libc (loaded once) and a check that turns a failed call's errno into OSError."""
    global _LIBC
    import ctypes
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)

    def check(result, name):
        if result != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"{name}: {os.strerror(err)}")
    return _LIBC, check


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
            # exist_ok: an interpreter under /tmp (a venv in a clone there) made /tmp already
            os.makedirs(os.path.join(root, name), 0o755, exist_ok=True)
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
        os.chdir(root)
        _pivot_root(".", "." + OLD_ROOT)
        os.chdir("/")
    except BaseException:
        _unmount(root)  # back to the host's view, so the caller can carry on without this one
        raise
    finally:
        os.close(host_work)


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
    libc, check = _libc()
    machine = os.uname().machine
    number = _PIVOT_ROOT.get(machine)
    if number is None:
        raise OSError(errno.ENOSYS, f"pivot_root: syscall number unknown on {machine}")
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
    nproc = config["nproc"]
    namespaces = root
    if not root:
        try:
            _enter_user_namespace()  # where the kernel counts RLIMIT_NPROC afresh (Linux 5.14+)
            namespaces = True
        except OSError as e:
            missing.append(f"user namespace ({e.strerror}): no network, ipc, pid or mount isolation; "
                           "the program can read every file the user can")
            nproc += _user_task_count(os.getuid())  # the limit counts the user's own processes
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
    tell(status, {"isolation": isolation, "missing": missing})

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
            _prctl(PR_SET_PDEATHSIG, SIGKILL)  # after setuid, which clears it
            os.chdir(workdir)
            env = dict(os.environ, HOME=workdir, TMPDIR=workdir)
            interpreter = config["interpreter"]
            os.execve(interpreter, [interpreter, "-I", config["script"]], env)
        except BaseException as e:  # noqa: BLE001 - report, never fall back into the launcher
            os.write(2, f"sandbox setup failed: {e!r}\n".encode())
            os._exit(SETUP_FAILED)
    tell(status, {"child": pid})
    _, wait_status, usage = os.wait4(pid, 0)
    tell(status, {"returncode": os.waitstatus_to_exitcode(wait_status),
                  "cpu_s": usage.ru_utime + usage.ru_stime})


if __name__ == "__main__":
    _launch(marshal.loads(bytes.fromhex(sys.argv[1])))
