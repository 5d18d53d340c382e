"""`ponder bench memory`: peak memory of one GRPO step at a real vocabulary, against TRL, same run.

The model is Qwen3-0.6B's width (hidden 1024, 16 query / 8 KV heads of 128, SwiGLU 3072, tied
embeddings, vocabulary 151,936) with few layers, so a step runs in minutes on a CPU; weights are
random. The tokenizer maps every id to one character, so any sampled id decodes. Each variant runs
in its own process, one after the other, and reports its peak resident memory (ru_maxrss: weights,
optimizer state, generation and update together) and its seconds per step. Beside the whole
process's peak it reports the memory in use at its idle point (after imports, model load and
set-up, before any optimizer state: TRL's `train()`, ponder's step-0 checkpoint) and the step's
peak above that baseline, which is what the variants are compared on: the whole-process figure
also counts what importing `transformers` and `trl` costs TRL's process. Both idle points hold
the weights resident and no AdamW state: transformers and safetensors map a checkpoint's file
without reading it, so each side's weights are read in at its idle point (they would be at the
first forward), and ponder's step-0 checkpoint is where its AdamW state is built (TRL's is built
at its first update), so the baseline is taken before it.

    trl        TRL's GRPOTrainer on the same weights and config (transformers' model and generate),
               with its defaults: activation checkpointing on, fused AdamW
    full       ponder with the loss head in one piece (loss_chunk_mb=0): [B, T, vocab] logits
    chunked    ponder's default: the loss head in chunks of 64 MB of logits (110 positions here),
               recomputed in backward
    ckpt       chunked + activation checkpointing
    lora       ckpt + LoRA r=16 on every projection (the base frozen: no gradient or AdamW state for it)

`--model DIR` measures an existing checkpoint folder (config.json, weights, tokenizer.json: a Gemma 3
one, say) instead of the random Qwen3-width model; `--layers` is then unused.

`--head` measures the loss head alone instead: log-probs + entropy + backward of B completions of
T tokens after a 64-token prompt, as extra peak memory above the weights, at each B x T of
`--shapes`, three ways over the same model: "body", the same forward and backward with no head (the
layers' activations and the embedding's gradient, which are not the head's), "chunked" and "full"
(the head in one piece, loss_chunk_mb=0). What a head adds is its row minus the body's, and the
chunked head's share of the one-piece head's is taken on those two differences, both in GiB. On a
CPU the one-piece head is skipped where it would not fit in the memory available now (it needs
about 4.5 fp32 logits tensors above the body: ~22 GB at 16 x 512).
"""

from __future__ import annotations

import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

VOCAB = 151_936
SHAPE = dict(hidden_size=1024, num_attention_heads=16, num_key_value_heads=8, head_dim=128, intermediate_size=3072,
             tie_word_embeddings=True, rope_theta=1e6, vocab_size=VOCAB, model_type="qwen3")
VARIANTS = ("trl", "full", "chunked", "ckpt", "lora")
LR = 1e-5


def peak_gib(device: str = "cpu") -> float:
    """Peak memory of this process: resident memory on the CPU, allocated GPU memory on CUDA."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def in_use_gib(device: str = "cpu") -> float:
    """Memory this process holds now: resident memory on the CPU, allocated GPU memory on CUDA."""
    return torch.cuda.memory_allocated() / 2**30 if device.startswith("cuda") else rss_gib()


def read_in(model) -> None:
    """Touch one number in every page of the weights, so that a file-backed (memory-mapped) model
    is resident, as a loaded one is."""
    with torch.no_grad():
        for p in model.parameters():
            p.detach().reshape(-1)[::1024].sum()


def read_owners_model(owner, *_, **__) -> None:
    """`prepare` for `idle_baseline` on a method of TRL's trainer or ponder's TrainingRun: both
    hold the model being trained as `.model`."""
    read_in(owner.model)


@contextmanager
def idle_baseline(owner, name: str, device: str, prepare=None):
    """Inside, the first call of `owner.name` (a class's method or a module's function) records
    the memory in use then into the yielded dict ("gib"), after `prepare(*its arguments)` where
    given: the idle baseline after imports, model load and set-up. `owner.name` is restored on exit."""
    real, idle = getattr(owner, name), {}

    def first(*args, **kwargs):
        if "gib" not in idle:
            if prepare is not None:
                prepare(*args, **kwargs)
            idle["gib"] = in_use_gib(device)
        return real(*args, **kwargs)

    setattr(owner, name, first)
    try:
        yield idle
    finally:
        setattr(owner, name, real)


def rss_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def build(root: Path, layers: int) -> None:
    """Random weights of the shape, and a tokenizer with one character per id, under root/base."""
    from ponder.models import Decoder, ModelConfig
    from ponder.tasks import multiply
    from ponder.tokenizer import build_char_tokenizer

    extra = VOCAB - len(multiply.ALPHABET) - 4  # four special tokens
    alphabet = multiply.ALPHABET + "".join(chr(0x10000 + i) for i in range(extra))
    tok = build_char_tokenizer(alphabet)
    torch.manual_seed(0)
    Decoder(ModelConfig(num_hidden_layers=layers, **SHAPE)).save_pretrained(root / "base")
    tok.save_pretrained(root / "base")


def prompts(n: int):
    from ponder.tasks import multiply

    return multiply.generate("train", n, seed=0)


def reward(prompt, completion, problem=None) -> float:
    """Random weights never finish: any reward will do; this one gives the groups some variance."""
    return float(len(completion) % 2)


def run_ponder(root: Path, variant: str, args) -> dict:
    from ponder.rl import RLConfig, train_rl
    from ponder.runtime.lora import LoRAConfig

    cfg = RLConfig(model=str(root / "base"), output_dir=str(root / variant), prompts_per_step=args.prompts,
                   group_size=args.group, max_new_tokens=args.max_new_tokens, steps=args.steps, lr=LR,
                   micro_batch_size=args.prompts * args.group, eval_every=0, save_every=0, rollback=False,
                   device=args.device, seed=0, loss_chunk_mb=0 if variant == "full" else 64,
                   gradient_checkpointing=variant in ("ckpt", "lora"), lora=LoRAConfig(r=16) if variant == "lora" else None)
    train_rl(cfg, problems=prompts(args.prompts * args.steps), rewards=[reward], progress=False)
    rows = [json.loads(x) for x in (root / variant / "metrics.jsonl").read_text().splitlines()]
    return {"step_s": [r["time/step"] for r in rows if "event" not in r],
            "train_s": [r["time/train"] for r in rows if "event" not in r]}


def run_trl(root: Path, args) -> dict:
    """TRL's GRPOTrainer, configured as bench grpo configures it."""
    from ponder.bench.grpo import run_trl as trl_steps

    class Args:  # what bench grpo's TRL runner reads
        prompts, group, max_new_tokens, steps = args.prompts, args.group, args.max_new_tokens, args.steps

    timings = trl_steps(root, prompts(args.prompts * args.steps), Args, reward_fn=reward, lr=LR,
                        use_cpu=not args.device.startswith("cuda"))
    return {"step_s": timings["step_s"], "train_s": [s - g - r for s, g, r in
                                                     zip(timings["step_s"], timings["generate_s"], timings["score_s"])]}


def child(args) -> int:
    """One variant in this process: print its figures as one JSON line."""
    logging.getLogger("ponder.rl").setLevel(logging.ERROR)  # random weights: truncation warnings expected
    root = Path(args.root)
    if args.head:
        return head_child(args)
    if args.variant == "trl":
        import trl

        with idle_baseline(trl.GRPOTrainer, "train", args.device, prepare=read_owners_model) as idle:
            t = run_trl(root, args)
    else:
        from ponder.runtime.training import TrainingRun

        with idle_baseline(TrainingRun, "save", args.device, prepare=read_owners_model) as idle:
            t = run_ponder(root, args.variant, args)
    later = slice(1, None) if len(t["step_s"]) > 1 else slice(None)  # the first step warms up
    mean = lambda xs: sum(xs[later]) / len(xs[later])  # noqa: E731
    peak, baseline = peak_gib(args.device), idle.get("gib", float("nan"))
    print(json.dumps({"variant": args.variant, "peak_gib": peak, "idle_gib": baseline, "step_gib": peak - baseline,
                      "s_per_step": mean(t["step_s"]), "train_s": mean(t["train_s"])}))
    return 0


def head_child(args) -> int:
    from ponder.models import from_pretrained, token_logprobs
    from ponder.runtime.training import chunk_positions

    cuda = args.device.startswith("cuda")
    model = from_pretrained(Path(args.root) / "base", device=args.device)
    vocab = model.config.vocab_size
    bsz, length = args.batch, args.length
    ids = torch.randint(0, vocab, (bsz, 64 + length), device=args.device)
    starts = torch.full((bsz,), 64, device=args.device)
    before = torch.cuda.memory_allocated() / 2**30 if cuda else rss_gib()
    if args.variant == "body":  # the same forward and backward with no head at all: what the head adds is the rest
        model(ids, head=lambda hidden, logits_fn: hidden[:, 63:-1].float().pow(2).mean()).backward()
    else:
        logp, ent = token_logprobs(model, ids, starts, length, 1.0, with_entropy=True,
                                   chunk_tokens=0 if args.variant == "full" else chunk_positions(64, vocab))
        logp.sum().backward()
    print(json.dumps({"variant": args.variant, "batch": bsz, "length": length,
                      "extra_gib": peak_gib(args.device) - before,
                      "logits_gib": bsz * length * vocab * 4 / 2**30}))
    return 0


def spawn(root: Path, args, variant: str, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "ponder", "bench", "memory", "--child", "--root", str(root), "--variant", variant,
           "--layers", str(args.layers), "--prompts", str(args.prompts), "--group", str(args.group),
           "--max-new-tokens", str(args.max_new_tokens), "--steps", str(args.steps), "--device", args.device] + extra
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if done.returncode != 0:
        return {"variant": variant, "error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def describe(root: Path, args) -> str:
    """What is measured: the model's name, width, vocabulary and depth."""
    config = json.loads((root / "base" / "config.json").read_text())
    name = args.model if getattr(args, "model", None) else "Qwen3-0.6B width"
    return (f"{name} (hidden {config['hidden_size']}), vocab {config['vocab_size']}, "
            f"{config['num_hidden_layers']} layers")


def main(args) -> int:
    if args.child:
        return child(args)
    with tempfile.TemporaryDirectory() as name:
        root = Path(name)
        if getattr(args, "model", None):  # an existing checkpoint: every variant reads it as root/base
            (root / "base").symlink_to(Path(args.model).resolve(), target_is_directory=True)
        else:
            build(root, args.layers)
        if args.head:
            return head_table(root, args)
        return step_table(root, args)


def shapes(text: str) -> list[tuple[int, int]]:
    """The B x T shapes of `--shapes`: "16x512,8x256" -> [(16, 512), (8, 256)]."""
    return [tuple(int(n) for n in part.lower().split("x")) for part in text.split(",") if part.strip()]


def available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return float("inf")


def head_table(root: Path, args) -> int:
    """Body, chunked and one-piece head at each shape, each row printed as soon as it is measured;
    then, per shape, what each head adds over the body and the chunked head's share of the
    one-piece head's."""
    rows, cpu = [], not args.device.startswith("cuda")
    vocab = json.loads((root / "base" / "config.json").read_text())["vocab_size"]
    if not args.json:
        print(f"loss head alone: log-probs + entropy + backward, {describe(root, args)}, 64-token prompts; extra "
              f"peak memory above the weights ({'peak resident' if cpu else 'peak allocated CUDA'} memory); "
              f"'head adds' is the extra over 'body', the same forward and backward with no head")
        print(f"{'path':8} {'B x T':>11} {'extra GiB':>10} {'head adds GiB':>14} {'one fp32 logits tensor GiB':>27}",
              flush=True)
    for b, t in shapes(args.shapes):
        logits = b * t * vocab * 4 / 2**30
        body = None
        for variant in ("body", "chunked", "full"):
            if variant == "full" and cpu and body is not None:
                need, have = body + 4.5 * logits, available_gib()
                if need > have:
                    r = {"variant": variant, "batch": b, "length": t,
                         "error": f"skipped: needs about {need:.1f} GiB, {have:.1f} GiB available"}
                    rows.append(r)
                    if not args.json:
                        print(f"{variant:8} {b:>5} x {t:<5} {r['error']}", flush=True)
                    continue
            r = spawn(root, args, variant, ["--head", "--batch", str(b), "--length", str(t)])
            r.setdefault("batch", b)
            r.setdefault("length", t)
            rows.append(r)
            if variant == "body" and "error" not in r:
                body = r["extra_gib"]
            if "error" not in r and variant != "body" and body is not None:
                r["head_gib"] = r["extra_gib"] - body
            if not args.json:
                if "error" in r:
                    print(f"{variant:8} {b:>5} x {t:<5} failed: {r['error']}", flush=True)
                    continue
                adds = f"{r['head_gib']:.2f}" if "head_gib" in r else ""
                print(f"{variant:8} {b:>5} x {t:<5} {r['extra_gib']:10.2f} {adds:>14} {r['logits_gib']:27.2f}",
                      flush=True)
    if args.json:
        print(json.dumps({"layers": args.layers, "rows": rows}))
        return 0
    for b, t in shapes(args.shapes):
        adds = {r["variant"]: r["head_gib"] for r in rows if (r["batch"], r["length"]) == (b, t) and "head_gib" in r}
        if "chunked" in adds and "full" in adds and adds["full"] > 0:
            print(f"{b} x {t}: the chunked head adds {adds['chunked']:.2f} GiB, the one-piece head {adds['full']:.2f} "
                  f"GiB: {adds['chunked'] / adds['full']:.0%} of it")
    return 0


def step_table(root: Path, args) -> int:
    """Each variant's row as soon as it is measured, so a run cut short keeps the rows it has."""
    rows = []
    if not args.json:
        where = args.device if args.device.startswith("cuda") else f"cpu, {torch.get_num_threads()} threads"
        memory = "peak allocated CUDA memory" if args.device.startswith("cuda") else "peak resident memory"
        print(f"one GRPO step, {describe(root, args)}, {args.prompts} prompts x "
              f"{args.group} completions of {args.max_new_tokens} tokens, fp32, {where}; each variant in its own "
              f"process; {memory}; 'idle' is the memory in use after imports, model load and set-up, 'step' "
              f"the peak above it (the ratio compares those); s/step is the mean over steps 2..{args.steps} "
              f"(all steps when 1)")
        print(f"{'variant':8} {'peak GiB':>9} {'idle GiB':>9} {'step GiB':>9} {'s/step':>8} {'update s':>9}",
              flush=True)
    for variant in args.variants.split(","):
        r = spawn(root, args, variant, [])
        rows.append(r)
        if args.json:
            continue
        trl = next((x for x in rows if x["variant"] == "trl" and "error" not in x), None)
        if "error" in r:
            print(f"{r['variant']:8} failed: {r['error']}", flush=True)
            continue
        ratio = (f"   TRL step / this: {trl['step_gib'] / r['step_gib']:.2f}x (whole process: "
                 f"{trl['peak_gib'] / r['peak_gib']:.2f}x)" if trl and r is not trl and r["step_gib"] > 0 else "")
        print(f"{r['variant']:8} {r['peak_gib']:9.2f} {r['idle_gib']:9.2f} {r['step_gib']:9.2f} {r['s_per_step']:8.2f} "
              f"{r['train_s']:9.2f}{ratio}", flush=True)
    if args.json:
        print(json.dumps({"layers": args.layers, "rows": rows}))
    return 0
