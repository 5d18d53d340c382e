"""Rewards that see tool use: how many tool calls a completion made, and a cost per call.

A call is a closed block in one of the tools' formats (ponder.tools runs those blocks and writes
their output back): ```` ```python\\n...\\n``` ```` for the Python tool, ``<calc>...</calc>`` for
the calculator. The formats live here, below ponder.tools, so that a reward (a pure function of
the completion's text) and the tool that runs the calls agree on them.

`tool_cost` is -1 per call; its weight in the config is the cost of one call:

    rewards: [correct, tool_cost]
    reward_weights: [1.0, 0.1]     # a right answer is worth 1, each call costs 0.1

so that a call where none is needed is not free, and one that turns a wrong answer into a right
one still pays.
"""

from __future__ import annotations

import re

# Each tool's call format: (what opens a call, what closes it); the text in between is the call.
PYTHON_CALL = ("```python\n", "\n```")
CALCULATOR_CALL = ("<calc>", "</calc>")
CALCULATOR_OUTPUT = ("<output>", "</output>")  # how the calculator frames the value it writes back

_CALLS = re.compile("|".join(f"{re.escape(o)}(?:(?!{re.escape(o)}).)+?{re.escape(c)}"
                             for o, c in (PYTHON_CALL, CALCULATOR_CALL)), re.S)


def tool_calls(text: str) -> int:
    """How many calls `text` holds: closed, non-empty blocks in either tool's format (an opening
    with no close, as in a completion cut off mid-call, is no call)."""
    return len(_CALLS.findall(text))


def tool_cost(prompt: str, completion: str, problem=None) -> float:
    """-1.0 per tool call in the completion (0.0 without one); weight it by the cost of a call."""
    return -float(tool_calls(completion))
