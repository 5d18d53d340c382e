"""Progress for long loops: a bar on a terminal, plain lines in a log file, with log records and
warnings printed on their own line above the bar rather than onto it.

A bar redraws itself with carriage returns: right for a terminal, wrong for a pipe or a log
file, which would keep every frame (a piped 2,000-step run held thousands). So a bar is drawn
only when stderr is a terminal; elsewhere (nohup, a log file, a pipe) the same loop prints one
plain line per update, at most one every LINE_EVERY_S seconds and always the last, with the
time spent and an estimate of the time left. While a bar is drawn, logging's console handlers
and `warnings.warn` go through `tqdm.write`, which lifts the bar, prints the line and redraws it.

    with ProgressBar(total=len(problems), desc="eval", unit="problem", enabled=progress) as bar:
        for ...:
            bar.update(1)

`bar = ProgressBar(...)` ... `bar.close()` works as well; close() restores the output routing.
"""

from __future__ import annotations

import sys
import time
import warnings

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm


def on_terminal(stream=None) -> bool:
    """Whether `stream` (default: sys.stderr, where bars go) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


LINE_EVERY_S = 10.0  # off a terminal: at most one progress line this often (the last always prints)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


class ProgressBar(tqdm):
    """A tqdm bar on stderr when `enabled` and stderr is a terminal; plain lines on stderr when
    `enabled` and it is not; nothing when not `enabled`. Set the postfix before `update` for
    the line to carry it."""

    def __init__(self, *args, enabled: bool = True, desc: str = "", **kwargs):
        self._restore = None
        self._lines = enabled and not on_terminal()
        kwargs.setdefault("dynamic_ncols", True)
        super().__init__(*args, desc=desc, disable=not (enabled and on_terminal()), **kwargs)
        if not self.disable:
            self._restore = _print_above_bars()
        if self._lines:
            self._label, self._postfix, self._first = desc, "", self.n
            self._started, self._last_line = time.monotonic(), float("-inf")

    def update(self, n: float = 1):
        if self._lines:  # tqdm counts nothing while disabled: count here
            self.n += n
            now = time.monotonic()
            if now - self._last_line >= LINE_EVERY_S or self.n >= (self.total or float("inf")):
                self._last_line = now
                print(self._line(now - self._started), file=sys.stderr, flush=True)
        return super().update(n)

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs):
        if self._lines:
            self._postfix = ", ".join(f"{k}={v}" for k, v in {**(ordered_dict or {}), **kwargs}.items())
        return super().set_postfix(ordered_dict, refresh, **kwargs)

    def _line(self, elapsed: float) -> str:
        done, total = self.n - self._first, self.total
        left = f", ~{_duration(elapsed / done * (total - self.n))} left" if total and done > 0 else ""
        count = f"{self.n:g}/{total:g}" if total else f"{self.n:g}"
        return f"{self._label}: {count} [{_duration(elapsed)} elapsed{left}]" + (f" {self._postfix}" if self._postfix else "")

    def close(self) -> None:
        restore, self._restore = getattr(self, "_restore", None), None
        if restore is not None:
            restore()
        super().close()


def _print_above_bars():
    """Send console log records and warnings through tqdm.write; returns what undoes it."""
    redirect = logging_redirect_tqdm(tqdm_class=tqdm)
    redirect.__enter__()
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        text = warnings.formatwarning(message, category, filename, lineno, line)
        tqdm.write(text.rstrip("\n"), file=sys.stderr)

    warnings.showwarning = show

    def restore() -> None:
        warnings.showwarning = shown
        redirect.__exit__(None, None, None)

    return restore
