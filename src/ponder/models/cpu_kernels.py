"""DecodeStep's C kernels (decode_kernels.c): compiled at first use with the machine's C
compiler and loaded with ctypes; `kernels()` is None where that fails, and DecodeStep then runs
the same steps as torch ops.

Compiled per process into a temporary folder (a fraction of a second: plain C, no torch
headers), for this CPU (-march=native): no build step at install time, and no cached binary that
another machine could not run.
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

SOURCE = Path(__file__).with_name("decode_kernels.c")
_P, _I, _F = ctypes.c_void_p, ctypes.c_int, ctypes.c_float


def _compile(compiler: str, out: Path) -> str | None:
    """Build the shared library; returns None on success, else the compiler's complaint."""
    base = ["-O3", "-fopenmp-simd", "-shared", "-fPIC", str(SOURCE), "-o", str(out), "-lm"]
    error = ""
    for arch in (["-march=native"], []):  # some compilers or CPUs lack -march=native
        try:
            done = subprocess.run([compiler, *arch, *base], capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as e:
            return str(e)
        if done.returncode == 0:
            return None
        error = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
    return error


@functools.cache
def kernels() -> ctypes.CDLL | None:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        warnings.warn("ponder: no C compiler found; decoding runs its elementwise steps as torch ops "
                      "(slower, same results)", stacklevel=2)
        return None
    with tempfile.TemporaryDirectory(prefix="ponder-kernels-", ignore_cleanup_errors=True) as folder:
        library = Path(folder) / "decode_kernels.so"
        error = _compile(compiler, library)
        if error is None:
            try:
                lib = ctypes.CDLL(str(library))  # stays mapped after the folder is removed
            except OSError as e:  # e.g. a temporary folder mounted noexec
                error = f"loading it: {e}"
        if error is not None:
            warnings.warn(f"ponder: building {SOURCE.name} with {compiler} failed ({error}); decoding "
                          "runs its elementwise steps as torch ops (slower, same results)", stacklevel=2)
            return None
    lib.add_rms.argtypes = [_P, _P, _P, _I, _I, _F]
    lib.add_rms.restype = None
    lib.qk_norm_rope_write.argtypes = [_P, _I, _I, _I, _I, _P, _F, _P, _P, _P, _P, _P, _I]
    lib.qk_norm_rope_write.restype = None
    return lib
