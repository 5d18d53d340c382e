"""Tool calls inside a completion (tool-integrated reasoning): Python the model writes in a
fenced block is run in the sandbox, and what it printed is written back into the completion as
forced tokens, which RL masks from the loss; the model then goes on writing. The format is the one
ToRL (arXiv:2503.23383) trains with:

    ```python
    print(6 * 7)
    ```
    ```output
    42
    ```

The engine (ponder.engine, `SamplingParams.tool`) asks `code_to_run` after each token the model
itself wrote that could close a block, runs the calls of a step side by side, and queues the
tokens of `result`. Every run is a fresh sandbox (ponder.rewards.sandbox: no network, a private
read-only filesystem, limits), so one call's state does not reach the next.
"""

from __future__ import annotations

from dataclasses import dataclass

from ponder.rewards.sandbox import Limits, run_python


@dataclass(frozen=True)
class PythonTool:
    """Run the model's fenced Python blocks and write their output back into the completion."""

    open: str = "```python\n"  # starts a call
    close: str = "\n```"  # ends it: the model's text up to here is the code
    max_calls: int = 4  # per completion; later blocks stay plain text
    timeout_s: float = 5.0  # wall-clock seconds per call, sandbox start-up included
    max_output_chars: int = 512  # longer output keeps its first and last characters

    def code_to_run(self, text: str) -> str | None:
        """The code of the block `text` has just closed, or None: the text must end with `close`,
        after an `open` with no `close` in between (an output block closing is not a call)."""
        if not text.endswith(self.close):
            return None
        end = len(text) - len(self.close)
        start = text.rfind(self.open, 0, end)
        if start < 0:
            return None
        code = text[start + len(self.open):end]
        return None if self.close in code else code

    def run(self, code: str) -> str:
        """What the code printed (stdout, then stderr's tail on an error), shortened to
        max_output_chars; a timeout or a sandbox failure is reported as text, never raised."""
        try:
            outcome = run_python("main.py", {"main.py": code}, limits=Limits(wall_s=self.timeout_s))
        except OSError as e:
            return f"(the sandbox could not start: {e})"
        out = outcome.stdout.decode("utf-8", "replace")
        if outcome.timed_out:
            out += f"(timed out after {self.timeout_s:g} s)"
        elif outcome.returncode:
            # The traceback's last lines name the error; the sandbox's own paths add nothing.
            out += "\n".join(outcome.stderr.decode("utf-8", "replace").strip().splitlines()[-3:])
        return self._shorten(out.strip())

    def result(self, output: str) -> str:
        """The text forced after a call: the output in its own fenced block."""
        return f"\n```output\n{output}\n```\n"

    def _shorten(self, text: str) -> str:
        if len(text) <= self.max_output_chars:
            return text
        keep = self.max_output_chars // 2
        return f"{text[:keep]}\n...({len(text) - 2 * keep} characters cut)...\n{text[-keep:]}"
