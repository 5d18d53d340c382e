"""Held-out greedy accuracy during training, for every trainer (RL, SFT, the ladder's methods):
the same prompts and the same reading of answers as `ponder eval` (ponder.evaluate.prompts), so
the figure a run logs is the figure `ponder eval` gives on the same checkpoint and problems.
Under torchrun each rank evaluates its share and the figures cover all of them."""

from __future__ import annotations

from typing import Sequence

from ponder.engine import SamplingParams
from ponder.evaluate.prompts import build_prompt, grade
from ponder.runtime import distributed


def evaluate_greedy(engine, tokenizer, problems: Sequence, *, max_new_tokens: int, chat: bool | None = None,
                    instruction: str | None = None, enable_thinking: bool = True, extract: str = "lenient",
                    stop_strings: Sequence[str] = (), tool=None) -> dict[str, float]:
    """eval/accuracy, eval/completion_len and eval/truncated_frac of greedy completions."""
    mine = distributed.my_share(problems)
    texts = [build_prompt(p, tokenizer, chat=chat, instruction=instruction, enable_thinking=enable_thinking)
             for p in mine]
    outs = engine.generate([tokenizer.encode(t) for t in texts], n=1,
                           params=SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0,
                                                 stop_strings=tuple(stop_strings), tool=tool)) if mine else []
    flat = [o[0] for o in outs]
    right = sum(grade(p, t, c.text, truncated=c.finish_reason == "length", extract=extract).correct
                for t, c, p in zip(texts, flat, mine))
    count, right, tokens, cut = distributed.all_sum(
        [len(flat), right, sum(len(c.token_ids) for c in flat), sum(c.finish_reason == "length" for c in flat)])
    return {"eval/accuracy": (right / count).item(), "eval/completion_len": (tokens / count).item(),
            "eval/truncated_frac": (cut / count).item()}
