"""The beginning-of-sequence token per tokenizer family, as the checkpoint's own settings say:
Qwen-style (none), Llama-style (tokenizer.json's post-processor writes it) and Gemma-style
(`add_bos_token` and a chat template that writes `{{ bos_token }}`). Exactly one BOS in
encoded prompts, chat prompts, engine prompts and training examples; transformers is the peer."""

from __future__ import annotations

import json

import pytest
import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers, processors

from ponder.engine import Engine, SamplingParams
from ponder.models import Decoder, ModelConfig
from ponder.sft import _example
from ponder.tokenizer import Tokenizer

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "<|im_start|>", "<|im_end|>"]
WORDS = ["user", "model", "assistant", "what", "is", "2", "+", "=", "?", "4", "hello", "world", "\n"]
BOS = SPECIALS.index("<bos>")
# Gemma's chat template, shortened (no system turn): it writes the BOS itself.
GEMMA_TEMPLATE = ("{{ bos_token }}{% for message in messages %}"
                  "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
                  "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
                  "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}")
TEXT = "what is 2 + 2 ?"
CHAT = [{"role": "user", "content": "what is 2 + 2 ?"}]


def write_tokenizer(folder, family: str):
    """A word-level tokenizer folder shaped like `family`'s: Qwen (no BOS anywhere), Llama (the
    post-processor writes it; no add_bos_token), Gemma (add_bos_token, post-processor, template)."""
    backend = HFTokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(SPECIALS + WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.add_special_tokens(SPECIALS)
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<eos>", "pad_token": "<pad>"}
    if family != "qwen":
        backend.post_processor = processors.TemplateProcessing(
            single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", BOS)])
        config["bos_token"] = "<bos>"
    if family == "qwen":
        config.update(bos_token=None, add_bos_token=False)
    if family == "gemma":
        config.update(add_bos_token=True, chat_template=GEMMA_TEMPLATE)
    folder.mkdir(parents=True, exist_ok=True)
    backend.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(params=["qwen", "llama", "gemma"])
def family(request, tmp_path):
    return request.param, write_tokenizer(tmp_path / request.param, request.param)


def test_encode_puts_exactly_the_checkpoints_bos_first(family):
    name, folder = family
    tok = Tokenizer.from_pretrained(folder)
    body = tok.encode(TEXT, add_special_tokens=False)
    assert BOS not in body and len(body) == 6
    if name == "qwen":
        assert not tok.add_bos_token and tok.encode(TEXT) == body
    else:
        assert tok.add_bos_token and tok.bos_token_id == BOS
        assert tok.encode(TEXT) == [BOS] + body
        assert tok.encode("<bos> " + TEXT) == [BOS] + body  # never two
    transformers = pytest.importorskip("transformers")
    assert transformers.AutoTokenizer.from_pretrained(folder)(TEXT).input_ids == tok.encode(TEXT)


def test_setting_survives_save_and_load(family, tmp_path):
    name, folder = family
    tok = Tokenizer.from_pretrained(folder)
    tok.save_pretrained(tmp_path / "again")
    again = Tokenizer.from_pretrained(tmp_path / "again")
    assert again.add_bos_token == (name != "qwen") and again.encode(TEXT) == tok.encode(TEXT)


def test_chat_prompt_has_one_bos_as_transformers_tokenizes_it(family):
    name, folder = family
    tok = Tokenizer.from_pretrained(folder)
    ids = tok.encode(tok.apply_chat_template(CHAT))
    assert ids.count(BOS) == (0 if name == "qwen" else 1) and (name == "qwen" or ids[0] == BOS)
    if name == "gemma":  # the template writes the BOS; encoding does not add a second
        transformers = pytest.importorskip("transformers")
        peer = transformers.AutoTokenizer.from_pretrained(folder)
        want = peer.apply_chat_template(CHAT, tokenize=True, add_generation_prompt=True)
        assert ids == list(want["input_ids"] if isinstance(want, dict) or hasattr(want, "keys") else want)


def test_engine_and_training_examples_start_with_one_bos(family):
    """A text prompt reaches the model as the tokenizer encodes a sequence's start; an SFT
    completion continues its prompt without a BOS of its own."""
    name, folder = family
    tok = Tokenizer.from_pretrained(folder)
    cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1)
    torch.manual_seed(0)
    engine = Engine(Decoder(cfg).eval(), tok)
    params = SamplingParams(max_new_tokens=6, temperature=0, stop_token_ids=())
    body = tok.encode(TEXT, add_special_tokens=False)
    [[from_text]], [[with_bos]], [[without]] = (engine.generate(p, params=params)
                                                for p in ([TEXT], [[BOS] + body], [body]))
    want = without if name == "qwen" else with_bos
    assert (from_text.token_ids, from_text.logprobs) == (want.token_ids, want.logprobs)
    assert with_bos.logprobs != without.logprobs  # the BOS does change what the model reads
    example = _example({"prompt": TEXT, "completion": "4"}, tok, max_length=64)  # (Gemma's: through its template)
    assert BOS not in example.target and (name == "qwen" or example.prompt[0] == BOS)
    assert (example.prompt + example.target).count(BOS) == (0 if name == "qwen" else 1)
