"""Progress bars: drawn on a terminal only (a pipe or log file gets no carriage-return frames), and
log records and warnings printed while a bar is drawn land on their own line, not onto the bar."""

import io
import logging
import sys
import warnings

import pytest

from ponder.progress import ProgressBar, on_terminal


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def console(monkeypatch):
    """A terminal stream with a root log handler writing to it (as logging.basicConfig sets up);
    each test makes it stderr in its own body (pytest re-installs its capture between fixture and test)."""
    stream = Terminal()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    yield stream
    root.removeHandler(handler)


def test_no_bar_frames_off_a_terminal(monkeypatch):
    pipe = io.StringIO()
    monkeypatch.setattr(sys, "stderr", pipe)
    assert not on_terminal()
    with ProgressBar(total=3, desc="steps") as bar:
        for _ in range(3):
            bar.update(1)
    assert "\r" not in pipe.getvalue() and "|" not in pipe.getvalue()  # plain lines, no redrawn bar
    assert pipe.getvalue().splitlines()[-1].startswith("steps: 3/3 [")


def test_bar_on_a_terminal_unless_disabled(console, monkeypatch):
    monkeypatch.setattr(sys, "stderr", console)
    with ProgressBar(total=3, desc="steps", mininterval=0) as bar:
        bar.update(3)
    assert "steps" in console.getvalue() and "3/3" in console.getvalue()
    console.truncate(0)
    with ProgressBar(total=3, desc="quiet", enabled=False) as bar:
        bar.update(3)
    assert "quiet" not in console.getvalue()


def _line_of(text: str, message: str) -> str:
    """What a terminal shows on the line where `message` was first printed: the text after its last \\r."""
    line = next(line for line in text.split("\n") if message in line)
    return line.split("\r")[-1]


def test_log_records_and_warnings_print_above_the_bar_not_onto_it(console, monkeypatch):
    monkeypatch.setattr(sys, "stderr", console)
    shown, handlers = warnings.showwarning, list(logging.getLogger().handlers)
    with ProgressBar(total=2, desc="steps", mininterval=0) as bar:
        bar.update(1)
        logging.getLogger("ponder.test").warning("held-out accuracy fell")
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("decoding with the slow path")
        bar.update(1)
    text = console.getvalue()
    assert _line_of(text, "held-out accuracy fell") == "WARNING held-out accuracy fell"
    assert _line_of(text, "decoding with the slow path").startswith(__file__)  # the warning's own format
    # Closing the bar puts logging and warnings back as they were.
    assert warnings.showwarning is shown and logging.getLogger().handlers == handlers


def test_without_the_redirect_the_record_would_share_the_bar_line(console, monkeypatch):
    """The check above can fail: a record written straight to the stream lands on the bar's line."""
    monkeypatch.setattr(sys, "stderr", console)
    bar = ProgressBar(total=2, desc="steps", mininterval=0)
    bar.update(1)
    console.write("WARNING straight\n")
    bar.close()
    assert _line_of(console.getvalue(), "straight") != "WARNING straight"


def test_evaluation_writes_no_bar_frames_into_a_pipe(tiny_checkpoint, capsys):
    from ponder.evaluate import evaluate
    from ponder.models import from_pretrained
    from ponder.tasks import load_task
    from ponder.tokenizer import Tokenizer

    model, tok = from_pretrained(tiny_checkpoint), Tokenizer.from_pretrained(tiny_checkpoint)
    evaluate(model, tok, load_task("multiply", limit=2), n=0, k_values=(), max_new_tokens=2, progress=True)
    assert "\r" not in capsys.readouterr().err


def test_off_a_terminal_each_update_prints_a_line_with_time_left(monkeypatch, capsys):
    """nohup or a log file: no bar frames, but one plain line per step with the postfix and an
    estimate of the time left (the last update always prints)."""
    import ponder.progress as progress

    monkeypatch.setattr(progress, "LINE_EVERY_S", 0.0)
    bar = progress.ProgressBar(total=3, desc="rl", enabled=True)
    for step in range(3):
        bar.set_postfix({"accuracy": f"{step / 4:.3f}"})
        bar.update(1)
    bar.close()
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and "\r" not in "".join(lines)
    assert lines[0].startswith("rl: 1/3 [") and "left]" in lines[0] and lines[0].endswith("accuracy=0.000")
    assert lines[2].startswith("rl: 3/3 [") and lines[2].endswith("accuracy=0.500")


def test_off_a_terminal_lines_are_throttled_but_the_last_prints(capsys):
    from ponder.progress import ProgressBar

    bar = ProgressBar(total=50, desc="eval", enabled=True)  # LINE_EVERY_S: 10 s between lines
    for _ in range(50):
        bar.update(1)
    bar.close()
    lines = capsys.readouterr().err.strip().splitlines()
    assert [line.split(" [")[0] for line in lines] == ["eval: 1/50", "eval: 50/50"]


def test_disabled_prints_nothing(capsys):
    from ponder.progress import ProgressBar

    bar = ProgressBar(total=2, desc="rl", enabled=False)
    bar.update(2)
    bar.close()
    assert capsys.readouterr().err == ""
