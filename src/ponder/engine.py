"""Batched sampling for RL rollouts and evaluation: the only place that loops over decode steps.

How a call runs:
  1. every distinct prompt is prefilled once (right-padded into one batch) into a preallocated
     KV cache; the cache rows are then repeated so the n samples of a prompt share that prefill;
  2. each decode step feeds one token per live row, samples the next (temperature, top-k, top-p,
     or greedy) and records its log-prob under the distribution it was drawn from;
  3. a row ends on a stop token, a stop string, or max_new_tokens; finished rows are dropped
     from the cache (compaction) once a quarter of the rows are dead, so they stop costing
     compute;
  4. forced tokens (a `</think>` once the thinking budget is spent, "Wait" in place of an
     early `</think>`, a tool call's output: ponder.tools) come from a small per-row queue and
     are marked so RL can mask them; each completion records the tool calls it made.
"""

from __future__ import annotations

import os
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from ponder.models import KVCache
from ponder.models.decode import DecodeStep, decode_path

if TYPE_CHECKING:
    from ponder.tools import Tool, ToolCall


def context_window(config) -> int | None:
    """Positions a model was trained on: max_position_embeddings, or what its RoPE scaling
    extends that to (None: the config does not say)."""
    context = getattr(config, "max_position_embeddings", None)
    scaling = getattr(config, "rope_scaling", None)
    if context is not None and scaling is not None:
        context = max(context, int(scaling.factor * (scaling.original_max_position_embeddings or context)))
    return context


@dataclass
class SamplingParams:
    """How to sample. One object serves RL rollouts, evaluation and `ponder generate`."""

    max_new_tokens: int = 256  # completion tokens per sample, forced ones included
    temperature: float = 1.0  # 0 means greedy (argmax)
    top_k: int = 0  # keep the k most likely tokens; 0 keeps all
    top_p: float = 1.0  # nucleus: smallest set whose probability reaches top_p; 1 keeps all
    stop_token_ids: tuple[int, ...] | None = None  # None: the tokenizer's eos token
    stop_strings: tuple[str, ...] = ()  # the completion ends once its text contains one of these
    thinking_budget: int | None = None  # after this many thinking tokens, force `</think>`
    extend_thinking: int = 0  # budget forcing: replace an early `</think>` by `extend_with`, up to this many times
    extend_with: str = "Wait"  # what replaces an early `</think>`
    tool: Tool | None = None  # run the model's tool calls (PythonTool, Calculator), force their output (ponder.tools)
    seed: int = 0  # same seed, same prompts, same model: same samples
    group_seeds: tuple[int, ...] | None = None  # one seed per prompt (overrides `seed`): a prompt's samples then depend on its seed alone, not on the prompts batched with it (data-parallel RL draws the same groups on any number of ranks)


@dataclass
class Completion:
    """One sample. `logprobs[i]` is the log-prob of `token_ids[i]` under the distribution it was
    drawn from (temperature, top-k and top-p applied; for greedy, the model's own distribution).
    Forced tokens have `forced[i]` True and log-prob 0: they were not sampled."""

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop" (stop token or string) or "length"
    text: str = ""
    forced: list[bool] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)  # the calls the tool ran, in order

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


_M64 = 2**64


def _i64(c: int) -> int:
    return c - _M64 if c >= 2**63 else c


def _shr(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def splitmix64(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64's output function on int64 tensors (wrapping arithmetic): a well-mixed hash."""
    x = x + _i64(0x9E3779B97F4A7C15)
    x = (x ^ _shr(x, 30)) * _i64(0xBF58476D1CE4E5B9)
    x = (x ^ _shr(x, 27)) * _i64(0x94D049BB133111EB)
    return x ^ _shr(x, 31)


def counter_uniform(keys: torch.Tensor, step: int) -> torch.Tensor:
    """One uniform in [0, 1) per key for decode step `step`: a counter-based draw, so a row's
    randomness does not depend on which other rows share the batch or its chunk."""
    bits = splitmix64(keys ^ splitmix64(torch.tensor(step, dtype=torch.long)).to(keys.device))
    return (_shr(bits, 11).double() / float(1 << 53)).float()


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Turn raw logits [R, V] into the logits of the distribution to sample from (fp32)."""
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the tokens ranked before it already reach top_p (the first always stays)
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


class Engine:
    """Sample from a ponder decoder. `tokenizer` is needed for text prompts, stop strings,
    the thinking controls and `Completion.text`; token-id prompts work without it."""

    def __init__(self, model, tokenizer=None, max_rows: int | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.max_rows = max_rows
        self._decode_step: DecodeStep | None = None
        self._decode_weights: list | None = None
        self._tokens_with: dict[str, torch.Tensor] = {}  # see _may_close
        self._warned_context = False  # the "may run past the context" warning is given once per engine

    # ---- public API -----------------------------------------------------------------------
    def generate(self, prompts, n: int = 1, params: SamplingParams | None = None) -> list[list[Completion]]:
        """Sample `n` completions for each prompt (text or token ids).
        Returns one list of `n` Completions per prompt, in order."""
        params = params or SamplingParams()
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if params.temperature < 0 or not 0 < params.top_p <= 1 or params.top_k < 0:
            raise ValueError(f"bad sampling parameters: {params}")
        prompt_ids = [self._encode(p) for p in prompts]
        for i, ids in enumerate(prompt_ids):
            if not ids:
                raise ValueError(f"prompt {i} is empty")
        if params.group_seeds is not None and len(params.group_seeds) != len(prompt_ids):
            raise ValueError(f"{len(params.group_seeds)} group_seeds for {len(prompt_ids)} prompts")
        self._check_context(prompt_ids, params.max_new_tokens)
        generator = torch.Generator(device=self._device).manual_seed(params.seed)
        per_chunk = max(1, self._row_budget(max(map(len, prompt_ids)) + params.max_new_tokens) // n)
        results: list[list[Completion]] = []
        for start in range(0, len(prompt_ids), per_chunk):
            keys = None
            if params.group_seeds is not None:  # sample i of prompt p draws from stream (seed_p, i)
                seeds = torch.tensor(params.group_seeds[start:start + per_chunk], dtype=torch.long)
                keys = (splitmix64(seeds).repeat_interleave(n) + torch.arange(n).repeat(len(seeds))).to(self._device)
            results += self._generate_chunk(prompt_ids[start:start + per_chunk], n, params, generator, keys)
        return results

    # ---- internals ------------------------------------------------------------------------
    @property
    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _encode(self, prompt) -> list[int]:
        """A text prompt starts a sequence: the tokenizer puts the checkpoint's BOS first where it
        has one. Token-id prompts are taken as they are."""
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("text prompts need a tokenizer: Engine(model, tokenizer)")
            return self.tokenizer.encode(prompt)
        return [int(t) for t in prompt]

    def _check_context(self, prompt_ids: list[list[int]], max_new_tokens: int) -> None:
        """Positions past the model's context window were never trained, and what the model makes
        of them is garbage: a prompt that is already past it is an error, a budget that may run
        past it a warning."""
        context = context_window(self.model.config)
        if context is None:
            return
        longest = max(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
        if len(prompt_ids[longest]) > context:
            raise ValueError(f"prompt {longest} is {len(prompt_ids[longest])} tokens, longer than the model's "
                             f"context of {context} positions (max_position_embeddings in its config.json)")
        if len(prompt_ids[longest]) + max_new_tokens > context and not self._warned_context:
            self._warned_context = True
            warnings.warn(f"ponder: a {len(prompt_ids[longest])}-token prompt plus max_new_tokens={max_new_tokens} "
                          f"can run past the model's context of {context} positions (max_position_embeddings); "
                          "tokens past it are unreliable: lower max_new_tokens or shorten the prompt", stacklevel=3)

    def _row_budget(self, max_len: int) -> int:
        """How many sample rows one chunk may hold: `max_rows`, or what fits ~2 GiB of KV cache."""
        if self.max_rows:
            return self.max_rows
        bytes_per_row = KVCache.bytes_for(self.model.config, max_len, self._dtype)
        return int(max(1, min(1024, (2 << 30) // max(bytes_per_row, 1))))

    def release(self) -> None:
        """Free the fast decode step's copy of the weights (rebuilt at the next generation). The
        training runtime calls this when a generation phase ends (`TrainingRun.generation`)."""
        self._decode_step = self._decode_weights = None

    def _decoder(self):
        """What runs a decode step, as `decode_path` says: `DecodeStep` (packed or not) where the
        model supports it and its copy of the weights fits in memory, rebuilt whenever the weights
        have changed since (an optimizer step bumps each parameter's version); else the model's
        own forward."""
        path = decode_path(self.model)
        if path == "plain":
            self._decode_step = self._decode_weights = None
            return self._forward_step
        try:
            weights = [(id(p), p._version) for p in self.model.parameters()]
        except RuntimeError:  # a model built under inference_mode keeps no version counters
            weights = None
        if weights is None or weights != self._decode_weights or self._decode_step.path != path:
            self._decode_step = self._decode_weights = None  # free the old copy before making a new one
            if not DecodeStep.fits(self.model):
                warnings.warn("ponder: no memory for the fast decode step's copy of the weights; decoding "
                              "with the model's forward (slower, same results)", stacklevel=3)
                return self._forward_step
            self._decode_step, self._decode_weights = DecodeStep(self.model, path), weights
        return self._decode_step

    def _forward_step(self, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        return self.model(tokens[:, None], cache=cache)[:, -1]

    @property
    def _dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def _stop_ids(self, params: SamplingParams) -> list[int]:
        if params.stop_token_ids is not None:
            return list(params.stop_token_ids)
        ids = []
        if self.tokenizer is not None and self.tokenizer.eos_token_id is not None:
            ids.append(self.tokenizer.eos_token_id)
        eos = getattr(self.model.config, "eos_token_id", None)
        ids += eos if isinstance(eos, list) else ([eos] if eos is not None else [])
        return sorted(set(ids))

    def _think_ids(self, params: SamplingParams) -> tuple[int | None, int | None, list[int]]:
        """Ids of `<think>`, `</think>` and of the extension text, when the thinking controls are on."""
        if params.thinking_budget is None and params.extend_thinking == 0:
            return None, None, []
        tok = self.tokenizer
        if tok is None or tok.token_to_id("</think>") is None or tok.token_to_id("<think>") is None:
            raise ValueError("thinking_budget / extend_thinking need a tokenizer with single-token "
                             "<think> and </think>")
        return (tok.token_to_id("<think>"), tok.token_to_id("</think>"),
                tok.encode(params.extend_with, add_special_tokens=False))

    @torch.inference_mode()
    def _generate_chunk(self, prompt_ids: list[list[int]], n: int, params: SamplingParams,
                        generator: torch.Generator, keys: torch.Tensor | None) -> list[list[Completion]]:
        device = self._device
        num_prompts = len(prompt_ids)
        rows = num_prompts * n
        lengths = torch.tensor([len(p) for p in prompt_ids], device=device)
        max_prompt = int(lengths.max())
        max_new = params.max_new_tokens

        # 1. prefill every prompt once, right-padded; padding sits after each row's last real
        # token, so the real tokens never attend to it, and decode overwrites it. The model is
        # told each row's real length: a sliding-window layer's ring must keep the last real
        # tokens, not padding.
        cache = KVCache(self.model.config, num_prompts, max_prompt + max_new, dtype=self._dtype, device=device)
        batch = torch.zeros(num_prompts, max_prompt, dtype=torch.long, device=device)
        for i, ids in enumerate(prompt_ids):
            batch[i, : len(ids)] = torch.tensor(ids)
        hidden = self.model.hidden(batch, cache=cache, lengths=lengths)
        last = self.model.logits(hidden[torch.arange(num_prompts, device=device), lengths - 1])
        # share the prefill: row r holds sample r % n of prompt r // n
        logits = last
        if n > 1:  # (with one sample per prompt the rows are already in place: no cache copy)
            prompt_of_row = torch.arange(num_prompts, device=device).repeat_interleave(n)
            cache.select(prompt_of_row)
            logits = last[prompt_of_row]
        decode = self._decoder()

        # per-sample outputs, written column by column (all live rows are at the same step)
        out_tokens = torch.zeros(rows, max_new, dtype=torch.long, device=device)
        out_logprobs = torch.zeros(rows, max_new, dtype=torch.float32, device=device)
        out_forced = torch.zeros(rows, max_new, dtype=torch.bool, device=device)
        out_len = torch.full((rows,), max_new, dtype=torch.long, device=device)
        finish = ["length"] * rows

        stop_ids = torch.tensor(self._stop_ids(params), dtype=torch.long, device=device)
        think_open, think_close, extension = self._think_ids(params)
        thinking = torch.zeros(rows, dtype=torch.bool, device=device)
        think_tokens = torch.zeros(rows, dtype=torch.long, device=device)
        extensions_used = torch.zeros(rows, dtype=torch.long, device=device)
        if think_open is not None:  # a prompt that ends inside an open <think> starts thinking
            for i, ids in enumerate(prompt_ids):
                opened = max((j for j, t in enumerate(ids) if t == think_open), default=-1)
                closed = max((j for j, t in enumerate(ids) if t == think_close), default=-1)
                thinking[i * n:(i + 1) * n] = opened > closed
        queued: dict[int, deque] = {}  # sample -> forced tokens still to emit
        tool = params.tool
        tool_calls: list[list[ToolCall]] = [[] for _ in range(rows)]
        if tool is not None:
            if self.tokenizer is None:
                raise ValueError("SamplingParams.tool needs a tokenizer: Engine(model, tokenizer)")
            may_close = self._may_close(tool.close[-1]).to(device)
        stop_window = max((len(s) for s in params.stop_strings), default=0) + 8

        live = torch.arange(rows, device=device)  # the sample each cache row holds
        alive = torch.ones(rows, dtype=torch.bool, device=device)  # per cache row
        for step in range(max_new):
            token, logprob = self._sample(logits, params, generator, None if keys is None else (keys[live], step))
            forced = None
            if queued or think_open is not None:  # tokens the model does not choose
                token, forced = self._apply_queue(token, torch.zeros_like(token, dtype=torch.bool), live, queued)
                if think_open is not None:
                    token, forced = self._thinking_controls(
                        token, forced, live, thinking, think_tokens, extensions_used, queued,
                        params, think_close, extension)
                logprob = logprob.masked_fill(forced, 0.0)
                out_forced[live, step] = forced
            # Finished rows not yet compacted away write here too: _collect cuts each at out_len.
            out_tokens[live, step] = token
            out_logprobs[live, step] = logprob

            done = alive & torch.isin(token, stop_ids)
            if params.stop_strings:
                samples = live[alive]
                done[alive] |= self._hit_stop_string(out_tokens, samples, step, params.stop_strings, stop_window)
            if forced is not None:  # only what the model writes itself can end its completion
                done &= ~forced
            if tool is not None:
                self._call_tool(tool, may_close, out_tokens, live, alive & ~done, forced, token, step,
                                tool_calls, queued)
            finished = bool(done.any())
            if finished:
                for sample in live[done].tolist():
                    finish[sample] = "stop"
                    queued.pop(sample, None)
                out_len[live[done]] = step + 1
                alive &= ~done
                remaining = int(alive.sum())
            if step == max_new - 1 or (finished and remaining == 0):
                break
            # Dead rows are dropped from the cache once they are a quarter of it: compaction
            # copies the cache, so it is paid a few times per call, not once per finished row.
            if finished and remaining * 4 <= 3 * len(alive):
                keep = alive.nonzero().squeeze(1)
                cache.select(keep)
                live, token, alive = live[keep], token[keep], alive[keep]
            logits = decode(token, cache)

        return self._collect(out_tokens, out_logprobs, out_forced, out_len, finish, tool_calls, n, params)

    def _sample(self, logits: torch.Tensor, params: SamplingParams, generator, keyed=None):
        """The next token of each row and its log-prob under the distribution it was drawn from.
        `keyed` = (row keys, step): each row's uniform is a function of its key and the step."""
        if params.temperature == 0:
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            token = logprobs.argmax(-1)
            return token, logprobs.gather(1, token[:, None]).squeeze(1)
        probs = torch.softmax(filter_logits(logits, params.temperature, params.top_k, params.top_p), -1)
        # Inverse-CDF sampling: one uniform per row. torch.multinomial draws an exponential
        # per vocabulary entry, which costs more than the rest of a small model's step.
        # right=True and u < total never land on a zero-probability (filtered) token.
        cdf = probs.cumsum(-1)
        total = cdf[:, -1:]
        if keyed is None:
            u = torch.rand(cdf.shape[0], 1, generator=generator, device=cdf.device)
        else:
            u = counter_uniform(*keyed)[:, None].to(cdf.device)
        u = u * total
        u = torch.minimum(u, torch.nextafter(total, torch.zeros_like(total)))
        token = torch.searchsorted(cdf, u, right=True).squeeze(1)
        # The log of the chosen probability equals log_softmax's entry to fp32 rounding, and
        # skips a log over the whole vocabulary.
        return token, probs.gather(1, token[:, None]).squeeze(1).log()

    @staticmethod
    def _apply_queue(token, forced, live, queued):
        for row, sample in enumerate(live.tolist()):
            pending = queued.get(sample)
            if pending:
                token[row] = pending.popleft()
                forced[row] = True
                if not pending:
                    del queued[sample]
        return token, forced

    def _may_close(self, char: str) -> torch.Tensor:
        """[vocab] bool: the tokens whose text holds `char`. Only a token holding the last
        character of a tool's `close` can end a call, so only rows that just wrote one are
        decoded and checked. Built once per engine (a pass over the vocabulary)."""
        if char not in self._tokens_with:
            vocab = self.model.config.vocab_size  # may exceed the tokenizer's (padded embeddings)
            has = [char in self.tokenizer.decode([i]) for i in range(min(vocab, self.tokenizer.vocab_size))]
            self._tokens_with[char] = torch.tensor(has + [False] * (vocab - len(has)))
        return self._tokens_with[char]

    def _call_tool(self, tool, may_close, out_tokens, live, open_rows, forced, token, step, calls, queued):
        """Run the tool calls the rows' own tokens of this step have just closed (side by side)
        and queue each output's tokens, to be forced from the next step on."""
        candidates = open_rows & may_close[token]
        if forced is not None:
            candidates &= ~forced
        jobs = []
        for sample in live[candidates].tolist():
            if len(calls[sample]) >= tool.max_calls:
                continue
            code = tool.code_to_run(self.tokenizer.decode(out_tokens[sample, :step + 1].tolist()))
            if code is not None:
                jobs.append((sample, code))
        if not jobs:
            return
        if len(jobs) == 1:  # the common case, and all an in-process tool needs: no thread to start
            done = [tool.run(jobs[0][1])]
        else:
            # A sandboxed run waits on its own process; a bounded pool keeps a step in which many
            # rows close a block at once from starting hundreds of processes together.
            with ThreadPoolExecutor(max_workers=min(len(jobs), 4 * (os.cpu_count() or 1))) as pool:
                done = list(pool.map(tool.run, [code for _, code in jobs]))
        for (sample, _), call in zip(jobs, done):
            calls[sample].append(call)
            queued[sample] = deque(self.tokenizer.encode(tool.result(call.output), add_special_tokens=False))

    def _thinking_controls(self, token, forced, live, thinking, think_tokens, extensions_used,
                           queued, params, think_close, extension):
        """Apply the thinking budget and budget forcing to this step's tokens (`forced`: which
        already come from the queue), then update each row's thinking state from the token it
        will actually emit. Returns the tokens and which were forced."""
        in_think = thinking[live]
        if params.extend_thinking and extension:
            early_close = in_think & (token == think_close) & ~forced & (extensions_used[live] < params.extend_thinking)
            for row in early_close.nonzero().squeeze(1).tolist():
                sample = int(live[row])
                token[row], forced[row] = extension[0], True
                extensions_used[sample] += 1
                if len(extension) > 1:
                    queued[sample] = deque(extension[1:])
        if params.thinking_budget is not None:
            over = in_think & (think_tokens[live] >= params.thinking_budget) & (token != think_close)
            for row in over.nonzero().squeeze(1).tolist():
                queued.pop(int(live[row]), None)
            token = torch.where(over, torch.full_like(token, think_close), token)
            forced = forced | over
        opened = token == self.tokenizer.token_to_id("<think>")
        closed = token == think_close
        think_tokens[live] += (in_think & ~closed).long()
        thinking[live] = (in_think | opened) & ~closed
        return token, forced

    def _hit_stop_string(self, out_tokens, live, step, stop_strings, window):
        """Which rows' newest token completes a stop string. Only an occurrence that ends in the
        newest token counts: an earlier one was forced text (a tool's output), which never ends
        a completion."""
        start = max(0, step + 1 - window)
        hit = []
        for tail in out_tokens[live, start:step + 1].tolist():
            text = self.tokenizer.decode(tail)
            found = any(s in text for s in stop_strings)
            if found:  # rare: only then is the text before the newest token decoded as well
                before = len(self.tokenizer.decode(tail[:-1]))
                found = any(text.find(s, max(0, before - len(s) + 1)) >= 0 for s in stop_strings)
            hit.append(found)
        return torch.tensor(hit, dtype=torch.bool, device=out_tokens.device)

    def _collect(self, out_tokens, out_logprobs, out_forced, out_len, finish, tool_calls, n, params):
        tokens, logprobs, forced, lens = (out_tokens.tolist(), out_logprobs.tolist(),
                                          out_forced.tolist(), out_len.tolist())
        stop_ids = set(self._stop_ids(params))
        completions = []
        for sample, length in enumerate(lens):
            ids = tokens[sample][:length]
            text = ""
            if self.tokenizer is not None:
                body = ids[:-1] if finish[sample] == "stop" and ids and ids[-1] in stop_ids else ids
                text = self.tokenizer.decode(body)
                # The stop string itself is not part of the answer; one inside forced text (a
                # tool's output) did not end the completion and stays.
                model_text_from = 0
                if params.stop_strings and any(forced[sample][:length]):
                    last_forced = max(i for i, f in enumerate(forced[sample][:length]) if f)
                    model_text_from = len(self.tokenizer.decode(ids[:last_forced + 1]))
                for s in params.stop_strings:
                    cut = text.find(s, model_text_from)
                    if cut >= 0:
                        text = text[:cut]
            completions.append(Completion(ids, logprobs[sample][:length], finish[sample], text,
                                          forced[sample][:length], tool_calls[sample]))
        return [completions[i:i + n] for i in range(0, len(completions), n)]
