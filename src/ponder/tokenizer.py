"""Tokenizer: a `tokenizer.json` read through the `tokenizers` library, the Qwen3 chat format
with its thinking switch, and small character-level tokenizers for the synthetic tasks.

A checkpoint that ships its own chat template (`chat_template` in tokenizer_config.json, or
chat_template.jinja) is rendered with it, through jinja2 in a sandbox, as transformers does;
without one the Qwen3 format below is used.

The beginning-of-sequence token follows the checkpoint: Gemma and Llama are trained with one
first (`add_bos_token` in tokenizer_config.json, or a tokenizer.json post-processor that writes
it), Qwen with none. `encode(text)` then starts with exactly one BOS: it adds none where the text
already starts with it (a chat template that writes `{{ bos_token }}`). Pieces that continue a
sequence (a completion, a tool's output) are encoded with `add_special_tokens=False`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import Tokenizer as _HFTokenizer
from tokenizers import models, pre_tokenizers, decoders

log = logging.getLogger("ponder.tokenizer")

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"


def _special_content(value) -> str | None:
    # tokenizer_config.json stores special tokens either as strings or as AddedToken dicts.
    if isinstance(value, dict):
        return value.get("content")
    return value


@dataclass
class Tokenizer:
    """Encode/decode text and render chat prompts. Build with `from_pretrained(dir)`."""

    backend: _HFTokenizer
    eos_token: str | None = None
    bos_token: str | None = None
    pad_token: str | None = None
    chat_template: str | None = None
    add_bos_token: bool = False  # sequences start with bos_token (Gemma, Llama); Qwen adds none
    # Characters already warned about as unknown (see encode): each is reported once, not per prompt.
    _unknown_seen: set = field(default_factory=set, init=False, repr=False, compare=False)

    # ---- loading and saving -------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path) -> "Tokenizer":
        """Read `tokenizer.json` (and `tokenizer_config.json`, `chat_template.jinja` when present)
        from a checkpoint folder, or a `tokenizer.json` file itself."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such folder")
        file = path if path.is_file() else path / "tokenizer.json"
        if not file.exists():
            raise FileNotFoundError(f"{file}: no tokenizer.json (ponder reads the fast-tokenizer file)")
        try:
            backend = _HFTokenizer.from_file(str(file))
        except Exception as err:  # the library's own message does not name the file
            raise ValueError(f"{file}: not a valid tokenizer.json ({err})") from err
        config: dict = {}
        config_file = file.parent / "tokenizer_config.json"
        if config_file.exists():
            try:
                config = json.loads(config_file.read_text())
            except json.JSONDecodeError as err:
                raise ValueError(f"{config_file}: invalid JSON at line {err.lineno}: {err.msg}") from err
        template = config.get("chat_template")
        template_file = file.parent / "chat_template.jinja"
        if template_file.exists():
            template = template_file.read_text()
        if isinstance(template, list):  # the named-template form: take the default one
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        bos_token = _special_content(config.get("bos_token"))
        added_first = _post_processor_first_token(backend)
        add_bos = config.get("add_bos_token")
        if not isinstance(add_bos, bool):
            # No setting in tokenizer_config.json: what tokenizer.json's post-processor does
            # (Llama 3 writes <|begin_of_text|> there), as transformers' fast tokenizers do.
            add_bos = added_first is not None and added_first == (bos_token or added_first)
            bos_token = bos_token or added_first
        return cls(
            backend=backend,
            eos_token=_special_content(config.get("eos_token")),
            bos_token=bos_token,
            pad_token=_special_content(config.get("pad_token")),
            chat_template=template,
            add_bos_token=add_bos and bos_token is not None and backend.token_to_id(bos_token) is not None,
        )

    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(path / "tokenizer.json"))
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "eos_token": self.eos_token,
            "bos_token": self.bos_token,
            "pad_token": self.pad_token,
            "add_bos_token": self.add_bos_token,
        }
        if self.chat_template is not None:
            config["chat_template"] = self.chat_template
        (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")

    # ---- ids and text ---------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self.backend.token_to_id(token)

    @property
    def eos_token_id(self) -> int | None:
        return self._id(self.eos_token)

    @property
    def pad_token_id(self) -> int | None:
        pad = self._id(self.pad_token)
        return self.eos_token_id if pad is None else pad

    @property
    def think_close_id(self) -> int | None:
        """Id of `</think>` when it is one token (Qwen3, and the synthetic tokenizers)."""
        return self._id(THINK_CLOSE)

    @property
    def bos_token_id(self) -> int | None:
        return self._id(self.bos_token)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`: a sequence's start, with the checkpoint's BOS first where it has
        one (exactly one: none is added to a text that already starts with it); with
        `add_special_tokens=False`, a piece that continues a sequence (no BOS).

        Characters the vocabulary lacks become the unknown token, which the model cannot read
        ("57×85=" asks it about "57<|unk|>85="): that is logged as a warning with their count,
        once for each new character."""
        # Special tokens written in the text (<|im_start|>, <think>, <bos>) map to their ids, as
        # in transformers. The BOS is added here, not by the post-processor, so it is never doubled.
        encoding = self.backend.encode(text, add_special_tokens=False)
        unk_token = getattr(self.backend.model, "unk_token", None)  # None for byte-level BPE: no unknowns
        unk = None if unk_token is None else self.backend.token_to_id(unk_token)
        if unk is not None and unk in encoding.ids:
            unknown = [text[a:b] for i, (a, b) in zip(encoding.ids, encoding.offsets) if i == unk]
            new = sorted(set(unknown) - self._unknown_seen)
            if new:
                self._unknown_seen.update(new)
                log.warning("%d character%s of %r not in the tokenizer's vocabulary became %s, which the model "
                            "cannot read: %s", len(unknown), "" if len(unknown) == 1 else "s", text[:80],
                            unk_token, " ".join(repr(c) for c in new))
        ids = encoding.ids
        bos = self.bos_token_id
        if add_special_tokens and self.add_bos_token and bos is not None and ids[:1] != [bos]:
            ids = [bos] + ids
        return ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    # ---- chat ---------------------------------------------------------------------------
    def apply_chat_template(
        self, messages: list[dict], add_generation_prompt: bool = True, enable_thinking: bool = True
    ) -> str:
        """Render a conversation as the prompt text the model was trained on.

        enable_thinking=False writes an empty `<think>\\n\\n</think>\\n\\n` after the assistant
        header, which is how Qwen3 hybrid models are told to answer without reasoning.
        """
        if self.chat_template is not None:
            return _render_jinja(self.chat_template, messages, add_generation_prompt, enable_thinking,
                                 bos_token=self.bos_token or "", eos_token=self.eos_token or "")
        return render_qwen3_chat(messages, add_generation_prompt, enable_thinking)


def _post_processor_first_token(backend: _HFTokenizer) -> str | None:
    """The special token tokenizer.json's post-processor puts first (e.g. Llama's BOS), if any."""
    plain = backend.encode("a", add_special_tokens=False).ids
    full = backend.encode("a", add_special_tokens=True)
    if len(full.ids) > len(plain) and full.special_tokens_mask[:1] == [1]:
        return backend.id_to_token(full.ids[0])
    return None


def render_qwen3_chat(messages: list[dict], add_generation_prompt: bool = True,
                      enable_thinking: bool = True) -> str:
    """The Qwen3 chat format (without tool calls), as its official template writes it.

    Assistant turns after the last user message keep their reasoning inside <think>; earlier
    ones are written with the reasoning stripped, which is how the models were trained.
    """
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)
    out = []
    for i, message in enumerate(messages):
        role, content = message["role"], message.get("content") or ""
        if role == "system" and i == 0 or role in ("user", "system"):
            out.append(f"{IM_START}{role}\n{content}{IM_END}\n")
        elif role == "assistant":
            reasoning = message.get("reasoning_content")
            if reasoning is None:
                reasoning = ""
                if THINK_CLOSE in content:
                    reasoning = content.split(THINK_CLOSE)[0].rstrip("\n").split(THINK_OPEN)[-1].lstrip("\n")
                    content = content.split(THINK_CLOSE)[-1].lstrip("\n")
            is_last = i == len(messages) - 1
            if i > last_user and (is_last or reasoning):
                body = f"{THINK_OPEN}\n{reasoning.strip(chr(10))}\n{THINK_CLOSE}\n\n{content.lstrip(chr(10))}"
            else:
                body = content
            out.append(f"{IM_START}assistant\n{body}{IM_END}\n")
        else:
            raise ValueError(f"message {i}: role {role!r} is not one of system, user, assistant")
    if add_generation_prompt:
        out.append(f"{IM_START}assistant\n")
        if not enable_thinking:
            out.append(f"{THINK_OPEN}\n\n{THINK_CLOSE}\n\n")
    return "".join(out)


def _render_jinja(template: str, messages, add_generation_prompt, enable_thinking, **special) -> str:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise ValueError(f"chat template: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda x, indent=None, **_: json.dumps(x, indent=indent, ensure_ascii=False)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(
        messages=messages, add_generation_prompt=add_generation_prompt,
        enable_thinking=enable_thinking, **special)


def build_char_tokenizer(alphabet: str, special_tokens: tuple[str, ...] = ()) -> Tokenizer:
    """A character-level tokenizer for synthetic tasks: one id per character of `alphabet`,
    plus special tokens (`<|endoftext|>`, `<|unk|>`, `<think>`, `</think>` always; more on request) that
    encode as single ids wherever they appear in text. Save it with `save_pretrained`."""
    specials = ["<|endoftext|>", "<|unk|>", THINK_OPEN, THINK_CLOSE]
    specials += [t for t in special_tokens if t not in specials]
    chars = sorted(set(alphabet))
    vocab = {tok: i for i, tok in enumerate(specials)}
    for ch in chars:
        vocab.setdefault(ch, len(vocab))
    backend = _HFTokenizer(models.WordLevel(vocab=vocab, unk_token="<|unk|>"))
    # Split into single characters; Split keeps spaces and digits as their own tokens.
    backend.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(specials)
    return Tokenizer(backend=backend, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
