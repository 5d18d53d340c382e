"""Fixtures shared by several test files."""

import sys

import pytest


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A random one-layer Qwen3 model with the multiply task's character tokenizer, saved in HF layout."""
    import torch

    from ponder.models import Decoder, ModelConfig
    from ponder.tasks import multiply
    from ponder.tokenizer import build_char_tokenizer

    tokenizer = build_char_tokenizer(multiply.ALPHABET)
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
    path = tmp_path_factory.mktemp("ckpt")
    Decoder(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def base(tmp_path_factory):
    """A tiny policy + char tokenizer saved in HF layout, and an importable reward module."""
    from rl_setup import make_base

    root = make_base(tmp_path_factory.mktemp("rl"))
    sys.path.insert(0, str(root))
    yield root
    sys.path.remove(str(root))
