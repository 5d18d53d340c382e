"""Engine: greedy equals transformers, log-probs are those of the sampling distribution, the
sampling knobs, stops, the thinking controls, shared prefill and dropping finished rows."""

import math

import pytest
import torch

from ponder.engine import Engine, SamplingParams, filter_logits
from ponder.models import Decoder, ModelConfig
from ponder.tokenizer import build_char_tokenizer

ALPHABET = "0123456789+-*=:. abcdefghijklmnopqrstuvwxyzW\n"


def tiny_model(vocab=64, seed=0, std=0.3, **overrides) -> Decoder:
    # A large init std makes random models produce varied (not constant) greedy output.
    cfg = dict(architectures=["Qwen3ForCausalLM"], model_type="qwen3", vocab_size=vocab, hidden_size=48,
               intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               head_dim=16, rope_theta=10000.0, tie_word_embeddings=False, initializer_range=std)
    cfg.update(overrides)
    torch.manual_seed(seed)
    return Decoder(ModelConfig.from_hf_dict(cfg)).eval()


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer(ALPHABET)


@pytest.fixture(scope="module")
def model(tok):
    return tiny_model(vocab=tok.vocab_size)


def full_logits(model, prompt, completion):
    ids = torch.tensor([list(prompt) + list(completion)])
    with torch.no_grad():
        return model(ids)[0, len(prompt) - 1:-1].float()


def test_greedy_equals_transformers_generate(model, tmp_path):
    transformers = pytest.importorskip("transformers")
    model.save_pretrained(tmp_path)
    peer = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    prompts = [[5, 9, 12], [7, 3, 3, 30, 2, 11, 8], [40]]
    out = Engine(model).generate(prompts, n=2, params=SamplingParams(max_new_tokens=20, temperature=0,
                                                                       stop_token_ids=()))
    for prompt, samples in zip(prompts, out):
        with torch.no_grad():
            want = peer.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=20, min_new_tokens=20,
                                 eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
        assert len(set(want)) > 3, "degenerate reference: the test would not discriminate"
        assert [c.token_ids for c in samples] == [want, want]


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.3, 5, 1.0), (1.0, 0, 0.6)])
def test_logprobs_are_those_of_the_sampling_distribution(model, temperature, top_k, top_p):
    prompts = [[5, 9, 12], [7, 3, 3, 30, 2]]
    params = SamplingParams(max_new_tokens=12, temperature=temperature, top_k=top_k, top_p=top_p,
                            stop_token_ids=(), seed=3)
    for prompt, samples in zip(prompts, Engine(model).generate(prompts, n=3, params=params)):
        for c in samples:
            want = torch.log_softmax(filter_logits(full_logits(model, prompt, c.token_ids), temperature, top_k, top_p), -1)
            got = torch.tensor(c.logprobs)
            assert torch.allclose(got, want[torch.arange(len(c.token_ids)), c.token_ids], atol=1e-4)
            assert torch.isfinite(got).all()  # never a token outside the top-k / nucleus


def test_top_k_and_top_p_filter_as_documented():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    assert torch.isinf(filter_logits(logits, 1.0, 2, 1.0)[0, 2:]).all()
    probs = torch.softmax(logits, -1)[0]  # 0.636, 0.234, 0.086, ...
    kept = torch.isfinite(filter_logits(logits, 1.0, 0, 0.8))[0]
    assert kept.tolist() == [True, True, False, False, False]  # 0.636 < 0.8 <= 0.636 + 0.234
    assert torch.isfinite(filter_logits(logits, 1.0, 0, 0.5))[0].sum() == 1  # the top token always stays
    assert probs[0] > 0.5


def test_seed_reproducible_and_samples_differ(model):
    prompts = [[5, 9, 12]]
    run = lambda seed: [c.token_ids for c in Engine(model).generate(
        prompts, n=4, params=SamplingParams(max_new_tokens=16, stop_token_ids=(), seed=seed))[0]]
    first = run(1)
    assert run(1) == first
    assert run(2) != first
    assert len({tuple(s) for s in first}) > 1


def test_stop_token_ends_a_row_and_is_kept_in_ids_not_text(model, tok):
    prompt = tok.encode("12*34=")
    greedy = Engine(model, tok).generate([prompt], params=SamplingParams(max_new_tokens=12, temperature=0,
                                                                         stop_token_ids=()))[0][0]
    stop = greedy.token_ids[3]
    first = greedy.token_ids.index(stop)
    c = Engine(model, tok).generate([prompt], params=SamplingParams(max_new_tokens=12, temperature=0,
                                                                    stop_token_ids=(stop,)))[0][0]
    assert c.finish_reason == "stop" and c.token_ids == greedy.token_ids[:first + 1]
    assert c.text == tok.decode(greedy.token_ids[:first])
    assert greedy.finish_reason == "length" and greedy.num_tokens == 12


def test_stop_string_cuts_the_text(model, tok):
    prompt = tok.encode("12*34=")
    greedy = Engine(model, tok).generate([prompt], params=SamplingParams(max_new_tokens=16, temperature=0,
                                                                         stop_token_ids=()))[0][0]
    target = greedy.text[5:7]
    c = Engine(model, tok).generate([prompt], params=SamplingParams(
        max_new_tokens=16, temperature=0, stop_token_ids=(), stop_strings=(target,)))[0][0]
    cut = greedy.text.find(target)
    assert c.finish_reason == "stop"
    assert c.text == greedy.text[:cut]
    assert c.num_tokens == cut + len(target)  # one character per token: ends on the token completing it


class Biased(Decoder):
    """A random decoder whose logits favour some tokens by fixed amounts: drives the engine's
    state machine (thinking close, stops) without a trained model."""

    bonus: dict[int, float] = {}

    def logits(self, hidden):
        out = super().logits(hidden)
        for token, value in self.bonus.items():
            out[..., token] += value
        return out


def biased(tok, bonus):
    model = tiny_model(vocab=tok.vocab_size)
    model.__class__ = Biased
    model.bonus = bonus
    return model


def test_thinking_budget_forces_close_then_lets_the_answer_follow(tok):
    model = biased(tok, {tok.think_close_id: -100.0})  # never closes by itself
    prompt = tok.encode("q:<think>")
    c = Engine(model, tok).generate([prompt], params=SamplingParams(
        max_new_tokens=12, temperature=1.0, stop_token_ids=(), thinking_budget=5, seed=0))[0][0]
    assert c.token_ids[5] == tok.think_close_id and c.forced[5] and c.logprobs[5] == 0.0
    assert tok.think_close_id not in c.token_ids[:5] and not any(c.forced[:5])
    assert not any(c.forced[6:]) and c.num_tokens == 12  # the answer follows, unforced


def test_extend_thinking_replaces_early_close_with_wait(tok):
    model = biased(tok, {tok.think_close_id: 100.0})  # always wants to close
    prompt = tok.encode("q:<think>")
    c = Engine(model, tok).generate([prompt], params=SamplingParams(
        max_new_tokens=12, temperature=0, stop_token_ids=(), extend_thinking=2, extend_with="Wait"))[0][0]
    close = tok.think_close_id
    assert c.text.startswith("WaitWait</think>")
    assert c.forced[:8] == [True] * 8 and c.forced[8] is False and c.token_ids[8] == close


def test_prefill_once_per_prompt_and_finished_rows_leave_the_batch(tok):
    stop = tok.token_to_id("x")
    model = biased(tok, {stop: 2.5})  # stops often, at random steps
    batch_sizes = []
    model.register_forward_pre_hook(lambda m, args, kwargs: batch_sizes.append(args[0].shape[0]), with_kwargs=True)
    hidden_calls = []
    original_hidden = model.hidden
    model.hidden = lambda ids, cache=None, lengths=None: (hidden_calls.append(ids.shape),
                                                          original_hidden(ids, cache, lengths))[1]
    prompts = [tok.encode("ab"), tok.encode("cde"), tok.encode("f")]
    out = Engine(model, tok).generate(prompts, n=8, params=SamplingParams(max_new_tokens=40, stop_token_ids=(stop,), seed=1))
    assert hidden_calls[0] == (3, 3)  # one right-padded prefill holding each prompt once
    lengths = [c.num_tokens for s in out for c in s]
    assert min(lengths) < 20 and all(c.finish_reason == ("stop" if c.token_ids[-1] == stop else "length")
                                      for s in out for c in s)
    assert batch_sizes[-1] < 24  # finished rows stopped costing compute
    alive_at = lambda step: sum(n > step for n in lengths)
    # dead rows are dropped once they are a quarter of the batch: never more than that wasted
    for step, size in enumerate(batch_sizes, start=1):
        assert alive_at(step) <= size and (size - alive_at(step)) * 4 <= size + 3


def test_chunking_gives_the_same_samples_as_one_batch(model):
    prompts = [[5, 9, 12], [7, 3], [40, 41, 42, 43]]
    params = SamplingParams(max_new_tokens=10, temperature=0, stop_token_ids=())
    whole = Engine(model).generate(prompts, n=2, params=params)
    chunked = Engine(model, max_rows=2).generate(prompts, n=2, params=params)
    assert [[c.token_ids for c in s] for s in whole] == [[c.token_ids for c in s] for s in chunked]
    assert math.isclose(whole[2][1].logprobs[3], chunked[2][1].logprobs[3], abs_tol=1e-5)


def test_bad_arguments_are_clear_errors(model):
    with pytest.raises(ValueError, match="tokenizer"):
        Engine(model).generate(["text"])
    with pytest.raises(ValueError, match="empty"):
        Engine(model).generate([[]])
