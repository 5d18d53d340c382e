"""Tokenizer: tokenizer.json round trips, the Qwen3 chat format against the official template
rendered by transformers, and the small character tokenizers of the synthetic tasks."""

import logging

import pytest

from ponder.tokenizer import Tokenizer, build_char_tokenizer, render_qwen3_chat

# The official Qwen3 chat template without its tool-call branches (those are not rendered by
# ponder's built-in format). Used as the reference that transformers renders.
QWEN3_TEMPLATE = (
    "{%- if messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}"
    "{%- for forward_message in messages %}"
    "{%- set index = (messages|length - 1) - loop.index0 %}"
    "{%- set message = messages[index] %}"
    "{%- if ns.multi_step_tool and message.role == 'user' %}"
    "{%- set ns.multi_step_tool = false %}{%- set ns.last_query_index = index %}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- for message in messages %}"
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- elif message.role == 'assistant' %}"
    "{%- set content = message.content %}{%- set reasoning_content = '' %}"
    "{%- if message.reasoning_content is defined and message.reasoning_content is not none %}"
    "{%- set reasoning_content = message.reasoning_content %}"
    "{%- else %}{%- if '</think>' in message.content %}"
    "{%- set content = (message.content.split('</think>')|last).lstrip('\\n') %}"
    "{%- set reasoning_content = (message.content.split('</think>')|first).rstrip('\\n') %}"
    "{%- set reasoning_content = (reasoning_content.split('<think>')|last).lstrip('\\n') %}"
    "{%- endif %}{%- endif %}"
    "{%- if loop.index0 > ns.last_query_index %}"
    "{%- if loop.last or (not loop.last and reasoning_content) %}"
    "{{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\\n' + content }}{%- endif %}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\\n' + content }}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+2?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "<think>\nhmm\n</think>\n\nA1"},
     {"role": "user", "content": "Q2"}],
    [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "<think>\nstep\n</think>\n\nfinal"}],
]


@pytest.fixture(scope="module")
def char_tok():
    return build_char_tokenizer("0123456789+-*=:. abcdefghijklmnopqrstuvwxyz\n", special_tokens=("<|im_start|>", "<|im_end|>"))


def test_char_tokenizer_round_trip_and_single_id_specials(char_tok, tmp_path):
    text = "12*34=<think>12*30=360</think>408"
    ids = char_tok.encode(text)
    assert char_tok.decode(ids) == text
    assert ids.count(char_tok.token_to_id("<think>")) == 1 and ids.count(char_tok.think_close_id) == 1
    assert len(ids) == len(text) - len("<think></think>") + 2  # one id per character, one per special
    char_tok.save_pretrained(tmp_path)
    again = Tokenizer.from_pretrained(tmp_path)
    assert again.encode(text) == ids and again.eos_token_id == char_tok.eos_token_id


def test_unknown_character_is_unk_not_eos(char_tok):
    [unk] = char_tok.encode("#")
    assert unk == char_tok.token_to_id("<|unk|>") != char_tok.eos_token_id


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("enable_thinking", [True, False])
def test_qwen3_chat_matches_official_template_in_transformers(char_tok, messages, enable_thinking):
    transformers = pytest.importorskip("transformers")
    peer = transformers.PreTrainedTokenizerFast(tokenizer_object=char_tok.backend, chat_template=QWEN3_TEMPLATE)
    want = peer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                    enable_thinking=enable_thinking)
    assert render_qwen3_chat(messages, True, enable_thinking) == want
    # a checkpoint that ships the template renders it the same way
    shipped = Tokenizer(backend=char_tok.backend, chat_template=QWEN3_TEMPLATE)
    assert shipped.apply_chat_template(messages, enable_thinking=enable_thinking) == want


def test_thinking_switch_writes_empty_think_block():
    prompt = render_qwen3_chat([{"role": "user", "content": "x"}], enable_thinking=False)
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert render_qwen3_chat([{"role": "user", "content": "x"}]).endswith("<|im_start|>assistant\n")


def test_unknown_characters_are_warned_with_their_count_once_each(caplog):
    tok = build_char_tokenizer("0123456789*=")
    with caplog.at_level(logging.WARNING, logger="ponder.tokenizer"):
        ids = tok.encode("57×85×2=")
    assert ids.count(tok.token_to_id("<|unk|>")) == 2  # still encoded (the model sees <|unk|>)...
    [record] = caplog.records  # ...but said out loud
    assert "2 characters" in record.message and "'×'" in record.message and "<|unk|>" in record.message
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ponder.tokenizer"):
        tok.encode("9×9=")  # a character already reported: no second warning per prompt
        assert not caplog.records
        tok.encode("9÷9=")  # a new one is reported
    assert len(caplog.records) == 1 and "1 character " in caplog.records[0].message
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ponder.tokenizer"):
        tok.encode("12*34=")
    assert not caplog.records


def test_missing_or_corrupt_tokenizer_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):  # not "no tokenizer.json"
        Tokenizer.from_pretrained(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match=str(tmp_path / "tokenizer.json")):
        Tokenizer.from_pretrained(tmp_path)
