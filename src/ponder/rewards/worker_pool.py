"""A small pool of killable worker processes with a deadline on every call.

Why not SIGALRM (math-verify's timeout): it works only on the main thread of the main interpreter,
so a grader called from a trainer thread silently fails. Why not multiprocessing: daemonic worker
processes (a multiprocessing.Pool of the caller) may not start children. A plain subprocess that
speaks length-prefixed pickles over its stdin/stdout works everywhere; a call that overruns its
deadline kills that worker and a fresh one replaces it on the next call.

`thread_map` is the other half of grading in parallel: calls that wait on such workers, or on
sandboxed programs, run side by side in a bounded pool of threads sized to the machine.
"""

from __future__ import annotations

import atexit
import os
import pickle
import select
import struct
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

STARTUP_TIMEOUT_S = 120.0   # a cold import of sympy on a busy machine; not part of a call's budget


class WorkerTimeout(Exception):
    """The call ran past its deadline; the worker was killed."""


class WorkerDied(Exception):
    """The worker exited or broke the protocol (e.g. killed for memory)."""


class _Worker:
    def __init__(self, module: str):
        env = dict(os.environ)
        src = str(Path(__file__).resolve().parents[2])   # so `-m ponder...` works uninstalled
        env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen([sys.executable, "-m", module], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        self.ready = False

    def _read(self, n: int, deadline: float) -> bytes:
        fd, chunks, got = self.proc.stdout.fileno(), [], 0
        while got < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise WorkerTimeout
            chunk = os.read(fd, n - got)
            if not chunk:
                raise WorkerDied(f"worker exited with code {self.proc.poll()}")
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def call(self, request, timeout: float):
        if not self.ready:
            if self._read(1, time.monotonic() + STARTUP_TIMEOUT_S) != b"R":
                raise WorkerDied("worker sent a bad greeting")
            self.ready = True
        body = pickle.dumps(request)
        try:
            self.proc.stdin.write(struct.pack("<I", len(body)) + body)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise WorkerDied(str(exc)) from exc
        deadline = time.monotonic() + timeout
        size = struct.unpack("<I", self._read(4, deadline))[0]
        return pickle.loads(self._read(size, deadline))

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.wait(timeout=5)
        except Exception:
            pass

    def close(self) -> None:
        try:
            self.proc.stdin.close()   # the worker sees EOF and exits
            self.proc.wait(timeout=2)
        except Exception:
            self.kill()


class WorkerPool:
    """Thread-safe: each concurrent caller gets its own worker; at most `size` stay idle."""

    def __init__(self, module: str, size: int = 1):
        self.module, self.size = module, size
        self._idle: list[_Worker] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()
        atexit.register(self.close)

    def _checkout(self) -> _Worker:
        with self._lock:
            if self._pid != os.getpid():   # forked: those workers belong to the parent
                self._idle, self._pid = [], os.getpid()
            if self._idle:
                return self._idle.pop()
        return _Worker(self.module)

    def _checkin(self, worker: _Worker) -> None:
        with self._lock:
            if len(self._idle) < self.size and self._pid == os.getpid():
                self._idle.append(worker)
                return
        worker.close()

    def call(self, request, timeout: float):
        """Run one request; raises WorkerTimeout or WorkerDied, and the caller carries on."""
        worker = self._checkout()
        try:
            result = worker.call(request, timeout)
        except BaseException:
            worker.kill()
            raise
        self._checkin(worker)
        return result

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        if self._pid == os.getpid():
            for worker in idle:
                worker.close()


def default_workers() -> int:
    """How many calls to run at once: the CPUs this process may use."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def thread_map(fn, items, workers: int | None = None) -> list:
    """[fn(x) for x in items], `workers` at a time (default: default_workers()), results in
    order. The first exception is raised once the calls still waiting have been cancelled."""
    items = list(items)
    workers = min(len(items), workers or default_workers())
    if workers <= 1:
        return [fn(x) for x in items]
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        return list(pool.map(fn, items))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
