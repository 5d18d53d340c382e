"""Progress bars for long loops: drawn on a terminal only, with log records and warnings printed
on their own line above the bar rather than onto it.

A bar redraws itself with carriage returns: right for a terminal, wrong for a pipe or a log
file, which would keep every frame (a piped 2,000-step run held thousands). So a bar is drawn
only when stderr is a terminal. While one is drawn, logging's console handlers and
`warnings.warn` go through `tqdm.write`, which lifts the bar, prints the line and redraws it.

    with ProgressBar(total=len(problems), desc="eval", unit="problem", enabled=progress) as bar:
        for ...:
            bar.update(1)

`bar = ProgressBar(...)` ... `bar.close()` works as well; close() restores the output routing.
"""

from __future__ import annotations

import sys
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


class ProgressBar(tqdm):
    """A tqdm bar on stderr, drawn when `enabled` and stderr is a terminal (else a silent no-op)."""

    def __init__(self, *args, enabled: bool = True, **kwargs):
        self._restore = None
        kwargs.setdefault("dynamic_ncols", True)
        super().__init__(*args, disable=not (enabled and on_terminal()), **kwargs)
        if not self.disable:
            self._restore = _print_above_bars()

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
