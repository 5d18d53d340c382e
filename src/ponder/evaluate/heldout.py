"""Held-out greedy accuracy during training, for every trainer (RL, SFT, the ladder's methods):
the same prompts and the same reading of answers as `ponder eval` (ponder.evaluate.prompts), so
the figure a run logs is the figure `ponder eval` gives on the same checkpoint and problems.
Under torchrun each rank evaluates its share and the figures cover all of them."""

from __future__ import annotations

from typing import Sequence

from ponder.engine import SamplingParams
from ponder.evaluate.prompts import build_prompt, grade
from ponder.rewards.process import step_rates, step_sums
from ponder.runtime import distributed


def evaluate_greedy(engine, tokenizer, problems: Sequence, *, max_new_tokens: int, chat: bool | None = None,
                    instruction: str | None = None, enable_thinking: bool = True, extract: str = "lenient",
                    stop_strings: Sequence[str] = (), tool=None) -> dict[str, float]:
    """eval/accuracy, eval/completion_len and eval/truncated_frac of greedy completions; where the
    problems have a step checker (ponder.rewards.process) also eval/right_answer_wrong_step (a
    right answer with a wrong or skipped step: outcome reward paying for bad reasoning) and
    eval/process (mean credit up to the first wrong step), over the checked problems."""
    mine = distributed.my_share(problems)
    texts = [build_prompt(p, tokenizer, chat=chat, instruction=instruction, enable_thinking=enable_thinking)
             for p in mine]
    outs = engine.generate([tokenizer.encode(t) for t in texts], n=1,
                           params=SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0,
                                                 stop_strings=tuple(stop_strings), tool=tool)) if mine else []
    flat = [o[0] for o in outs]
    correct = [grade(p, t, c.text, truncated=c.finish_reason == "length", extract=extract).correct
               for t, c, p in zip(texts, flat, mine)]
    steps = step_sums([c.text for c in flat], mine, correct)
    count, right, tokens, cut, *summed = distributed.all_sum(
        [len(flat), sum(correct), sum(len(c.token_ids) for c in flat), sum(c.finish_reason == "length" for c in flat),
         *steps.values()])
    result = {"eval/accuracy": (right / count).item(), "eval/completion_len": (tokens / count).item(),
              "eval/truncated_frac": (cut / count).item()}
    checked = step_rates(dict(zip(steps, (float(s) for s in summed))))
    if checked:
        result["eval/right_answer_wrong_step"] = checked["right_answer_wrong_step"]
        result["eval/process"] = checked["process"]
    return result
