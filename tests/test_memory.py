"""Memory options: the chunked loss head (never [B, T, vocab]) and activation checkpointing.

Each is compared with the plain computation (values and gradients), and each test also checks
that the memory-saving path really ran: several chunks, recomputation in the backward pass, and
no tensor of the full logits' size kept for autograd.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ponder.models import Decoder, MLAConfig, ModelConfig, MoEConfig, router_stats, token_logprobs

VOCAB = 97


def qwen3(tied: bool) -> Decoder:
    torch.manual_seed(0)
    model = Decoder(ModelConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                tie_word_embeddings=tied))
    with torch.no_grad():  # the default init leaves norms at 1, which hides mistakes
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def padded_batch(seed: int = 0):
    """Rows of different prompt and completion lengths, right-padded with 0."""
    g = torch.Generator().manual_seed(seed)
    starts, lengths = [3, 5, 2, 4], [6, 2, 7, 4]
    rows = [torch.randint(1, VOCAB, (s + n,), generator=g) for s, n in zip(starts, lengths)]
    width = max(map(len, rows))
    ids = torch.stack([F.pad(r, (0, width - len(r))) for r in rows])
    mask = (torch.arange(max(lengths))[None] < torch.tensor(lengths)[:, None]).float()
    return ids, torch.tensor(starts), max(lengths), mask


def full_logprobs(model, ids, starts, length, temperature):
    """The plain computation: every position's logits, log-softmax, gather."""
    logprobs = F.log_softmax(model(ids).float() / temperature, dim=-1)
    seq = ids.size(1)
    pos = (starts[:, None] - 1 + torch.arange(length)).clamp(0, seq - 1)
    row = torch.arange(ids.size(0))[:, None]
    at = logprobs[row, pos]  # [B, length, vocab]: the distributions that predict each completion token
    lp = at.gather(2, ids[row, (pos + 1).clamp(max=seq - 1)][..., None]).squeeze(-1)
    return lp, -(at.exp() * at).sum(-1)


def grads(model):
    out = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return out


class CountingHead:
    """Wraps a model so that every lm_head call is counted (forward chunks and recomputations)."""

    def __init__(self, model):
        self.model, self.calls = model, 0

    def __call__(self, ids, head):
        def counted(hidden, logits_fn):
            def logits(h):
                self.calls += 1
                return logits_fn(h)
            return head(hidden, logits)
        return self.model(ids, head=counted)


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_head_equals_the_full_computation(tied, temperature):
    model = qwen3(tied)
    ids, starts, length, mask = padded_batch()
    # Per-token weights like advantages, over the token count as the DAPO loss divides.
    weights = torch.randn(mask.shape, generator=torch.Generator().manual_seed(1)) * mask / mask.sum()

    ref_lp, ref_ent = full_logprobs(model, ids, starts, length, temperature)
    (ref_lp * weights).sum().backward()
    ref_grads = grads(model)

    counting = CountingHead(model)
    lp, ent = token_logprobs(counting, ids, starts, length, temperature, with_entropy=True, chunk_tokens=5)
    (lp * weights).sum().backward()
    chunked_grads = grads(model)

    rows = ids.size(0) * length
    chunks = -(-rows // 5)
    assert counting.calls == 2 * chunks  # each chunk once forward, once recomputed in backward
    assert torch.allclose(lp * mask, ref_lp * mask, atol=1e-6, rtol=0)
    # Entropy sums vocab terms to ~4.5, where fp32 steps by 4.8e-7; a chunk's matmul blocks
    # differently from the full one, so allow 1e-6 of relative error (about 4 steps) there.
    assert torch.allclose(ent * mask, ref_ent * mask, atol=1e-6, rtol=1e-6)
    assert ent.grad_fn is None  # a metric, no gradient
    for a, b in zip(chunked_grads, ref_grads):
        assert torch.allclose(a, b, atol=1e-6, rtol=0)
    assert all(g.abs().sum() > 0 for g in ref_grads)  # every weight moved, the head's included


def test_chunked_head_under_bf16_autocast_equals_one_chunk():
    model = qwen3(tied=True)
    ids, starts, length, mask = padded_batch(2)
    results = []
    for chunk in (0, 4):  # 0: one chunk, no recomputation
        with torch.autocast("cpu", dtype=torch.bfloat16):
            lp, _ = token_logprobs(model, ids, starts, length, 0.9, chunk_tokens=chunk)
        assert lp.dtype == torch.float32
        (lp * mask).sum().backward()
        results.append((lp.detach(), grads(model)))
    (lp0, g0), (lp1, g1) = results
    assert torch.allclose(lp0 * mask, lp1 * mask, atol=1e-6, rtol=0)
    for a, b in zip(g0, g1):
        assert torch.allclose(a, b, atol=1e-6, rtol=0)
    fp32, _ = token_logprobs(model, ids, starts, length, 0.9)
    assert not torch.allclose(fp32 * mask, lp0 * mask, atol=1e-4)  # autocast did change the body


def saved_bytes(fn) -> tuple[int, int]:
    """(total, largest) bytes of the tensors autograd keeps for the backward pass of fn()."""
    sizes = []

    def pack(t):
        sizes.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(sizes), max(sizes)


def test_chunked_head_keeps_no_full_logits_for_backward():
    torch.manual_seed(0)
    model = Decoder(ModelConfig(vocab_size=4096, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                num_attention_heads=2, num_key_value_heads=1, head_dim=8, tie_word_embeddings=True))
    ids = torch.randint(0, 4096, (8, 40))
    starts, length = torch.full((8,), 8), 32
    logits_bytes = 8 * length * 4096 * 4
    _, full_total, full_largest = saved_bytes(lambda: token_logprobs(model, ids, starts, length, chunk_tokens=0))
    _, total, largest = saved_bytes(lambda: token_logprobs(model, ids, starts, length, chunk_tokens=16))
    assert full_largest >= logits_bytes  # the plain path keeps [B*T, vocab] (what we avoid)
    assert largest < logits_bytes / 8 and total < full_total / 4


def head_model(tied: bool, softcap: bool) -> Decoder:
    """qwen3(tied), or a Gemma 3 one with final-logit soft-capping (Gemma's alone)."""
    if not softcap:
        return qwen3(tied)
    torch.manual_seed(0)
    model = Decoder(ModelConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, head_dim=8, model_type="gemma3_text",
                                hidden_act="gelu_pytorch_tanh", query_pre_attn_scalar=8.0,
                                final_logit_softcapping=3.0, tie_word_embeddings=tied))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)  # logits past the cap's knee, so that tanh's derivative matters
    return model


class WeightSizedGradients(torch.utils._python_dispatch.TorchDispatchMode):
    """Names the ops that make a new tensor of a weight's shape while it is on (in-place ops and
    views make none), less the embedding's own gradient (`embedding_dense_backward`) and
    autograd's sums of a weight's gradients (`add`): what is left is the head's."""

    def __init__(self, shape):
        super().__init__()
        self.shape, self.made = tuple(shape), []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        schema, name = func._schema, func.overloadpacket.__name__
        if (not schema.is_mutable and not any(r.alias_info for r in schema.returns)
                and name not in ("embedding_dense_backward", "add")):
            outs = out if isinstance(out, (tuple, list)) else [out]
            self.made += [name for t in outs
                          if isinstance(t, torch.Tensor) and tuple(t.shape) in (self.shape, self.shape[::-1])]
        return out


def head_weight(model: Decoder) -> torch.Tensor:
    return model.model.embed_tokens.weight if model.lm_head is None else model.lm_head.weight


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("softcap", [False, True], ids=["no-cap", "softcap"])
def test_chunked_head_backward_equals_the_one_piece_head(tied, softcap):
    """The chunked head's written-out backward (weight gradient in one buffer) gives the one-piece
    head's log-probs, entropy and every gradient: the body's, the final norm's and the head
    weight's, tied or untied, soft-capped or not, at a temperature."""
    model = head_model(tied, softcap)
    ids, starts, length, mask = padded_batch()
    weights = torch.randn(mask.shape, generator=torch.Generator().manual_seed(1)) * mask / mask.sum()
    results = []
    for chunk in (0, 5):  # 0: one piece, plain autograd; 5: several chunks
        lp, ent = token_logprobs(model, ids, starts, length, 0.7, with_entropy=True, chunk_tokens=chunk)
        (lp * weights).sum().backward()
        results.append((lp.detach(), ent, dict((n, p.grad) for n, p in model.named_parameters())))
        model.zero_grad(set_to_none=True)
    (ref_lp, ref_ent, ref), (got_lp, got_ent, got) = results
    assert torch.allclose(got_lp * mask, ref_lp * mask, atol=1e-6, rtol=0)
    assert torch.allclose(got_ent * mask, ref_ent * mask, atol=1e-6, rtol=1e-6)
    assert got_ent.grad_fn is None  # a metric, no gradient
    for name, g in ref.items():
        assert g.abs().sum() > 0, name  # every weight moved, the head's included: equality proves something
        torch.testing.assert_close(got[name], g, atol=1e-6, rtol=1e-5, msg=name)
    assert (ref["model.embed_tokens.weight"] if tied else ref["lm_head.weight"]).abs().sum() > 0


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_chunked_head_weight_gradient_is_one_buffer(tied):
    """However many chunks, the head's backward makes one weight-sized gradient, not one per chunk
    for autograd to sum. A counting wrapper around the model's logits hides what they are from the
    head, which then takes the autograd path: one per chunk, the check's own check."""
    model = qwen3(tied)
    ids, starts, length, mask = padded_batch()
    shape = head_weight(model).shape
    chunks = -(-ids.size(0) * length // 3)
    made = []
    for net in (model, CountingHead(model)):
        lp, _ = token_logprobs(net, ids, starts, length, 0.7, chunk_tokens=3)
        with WeightSizedGradients(shape) as counted:
            (lp * mask).sum().backward()
        model.zero_grad(set_to_none=True)
        made.append(counted.made)
    assert len(made[0]) == 1
    assert len(made[1]) >= chunks


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_chunked_head_computes_no_gradient_for_a_frozen_head_weight(tied):
    model = qwen3(tied)
    ids, starts, length, mask = padded_batch()
    weight = head_weight(model)
    weight.requires_grad_(False)
    results = []
    for chunk in (0, 4):
        lp, _ = token_logprobs(model, ids, starts, length, chunk_tokens=chunk)
        with WeightSizedGradients(weight.shape) as counted:
            (lp * mask).sum().backward()
        results.append([p.grad.clone() for p in model.parameters() if p.requires_grad])
        model.zero_grad(set_to_none=True)
    assert weight.grad is None
    assert counted.made == []  # not computed and dropped: not computed
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5)


def test_chunked_head_through_a_lora_adapter_on_the_lm_head():
    """An adapter on an untied lm_head is more than a weight: the chunked head calls the model's
    logits (the autograd path) and still equals the one-piece head, the adapter's gradient
    included, with no gradient for the frozen base."""
    pytest.importorskip("peft")
    from ponder.runtime.lora import LoRAConfig, apply_lora

    model = apply_lora(qwen3(tied=False), LoRAConfig(r=4, alpha=8, target_modules=["q_proj", "lm_head"]))
    assert model.linear_head() is None
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if ".lora_" in name:  # B starts at zero, which would leave A's gradient at zero
                p.copy_(0.2 * torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))))
    ids, starts, length, mask = padded_batch()
    results = []
    for chunk in (0, 5):
        lp, _ = token_logprobs(model, ids, starts, length, 0.7, chunk_tokens=chunk)
        (lp * mask).sum().backward()
        results.append((lp.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}))
        model.zero_grad(set_to_none=True)
    (ref_lp, ref), (got_lp, got) = results
    assert torch.allclose(got_lp * mask, ref_lp * mask, atol=1e-6, rtol=0)
    assert any("lm_head" in n for n in ref) and all(g.abs().sum() > 0 for g in ref.values())
    for name, g in ref.items():
        torch.testing.assert_close(got[name], g, atol=1e-6, rtol=1e-5, msg=name)
    assert model.lm_head.base_layer.weight.grad is None


def test_chunked_head_scores_under_no_grad():
    """Scoring (a frozen reference, best-of-n) runs the same chunks without a graph."""
    model = head_model(tied=True, softcap=True)
    ids, starts, length, mask = padded_batch()
    lp, ent = token_logprobs(model, ids, starts, length, 0.8, with_entropy=True, chunk_tokens=4)
    with torch.no_grad():
        lp0, ent0 = token_logprobs(model, ids, starts, length, 0.8, with_entropy=True, chunk_tokens=4)
    assert lp0.grad_fn is None and lp.grad_fn is not None
    assert torch.equal(lp0, lp.detach()) and torch.equal(ent0, ent)


def moe_model() -> Decoder:
    torch.manual_seed(0)
    return Decoder(ModelConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                               num_attention_heads=4, num_key_value_heads=2, head_dim=8, model_type="qwen3_moe",
                               moe=MoEConfig(num_experts=6, num_experts_per_tok=2, moe_intermediate_size=16,
                                             norm_topk_prob=True, mlp_only_layers=(1,))))


def mla_model() -> Decoder:
    torch.manual_seed(0)
    mla = MLAConfig(kv_lora_rank=12, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=6, q_lora_rank=10)
    return Decoder(ModelConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                               num_attention_heads=4, model_type="deepseek_v3", head_dim=4, mla=mla,
                               moe=MoEConfig(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=16,
                                             norm_topk_prob=True, n_shared_experts=1, routed_scaling_factor=2.5,
                                             n_group=4, topk_group=2, first_k_dense_replace=1)))


@pytest.mark.parametrize("build", [lambda: qwen3(False), moe_model, mla_model], ids=["dense", "qwen3_moe", "mla_moe"])
def test_activation_checkpointing_gives_the_same_gradients_and_keeps_less(build):
    model = build()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ids, starts, length, mask = padded_batch(3)
    runs = []
    for on in (False, True):
        model.set_gradient_checkpointing(on)
        router_stats(model)  # reset the load counts
        (lp, _), total, _ = saved_bytes(lambda: token_logprobs(model, ids, starts, length))
        (lp * mask).sum().backward()
        runs.append((lp.detach(), grads(model), total, router_stats(model).get("load")))
    (lp0, g0, kept0, load0), (lp1, g1, kept1, load1) = runs
    assert torch.equal(lp0, lp1)
    for a, b in zip(g0, g1):
        assert torch.allclose(a, b, atol=1e-6, rtol=0)
    assert sum(g.abs().sum() for g in g0) > 0
    assert kept1 < kept0 / 2  # fewer activations kept for the backward pass
    assert load0 == load1  # the routing is counted once, not again when recomputed


def test_bench_memory_idle_point_holds_memory_mapped_weights_resident(tmp_path):
    """`ponder bench memory` compares each side's step above its idle point. transformers and
    safetensors map a checkpoint's file without reading it, so the weights would count in the step
    and not in the idle point unless they are read in there; the idle point is taken once, after."""
    from ponder.bench.memory import idle_baseline, read_in, rss_gib

    path = tmp_path / "weights.pt"
    torch.save(torch.ones(16 * 2**20), path)  # 64 MiB of fp32
    model = torch.nn.Linear(1, 1)
    model.weight = torch.nn.Parameter(torch.load(path, mmap=True).view(-1, 1), requires_grad=False)

    class Trainer:
        def train(self, steps):
            return steps

    before = rss_gib()
    with idle_baseline(Trainer, "train", "cpu", prepare=lambda trainer, *_: read_in(model)) as idle:
        assert Trainer().train(3) == 3
        first = idle["gib"]
        Trainer().train(4)
    assert idle["gib"] == first  # the first call only
    assert first - before > 0.8 * 64 / 1024  # the mapped pages became resident
    assert Trainer.train.__name__ == "train"  # restored
