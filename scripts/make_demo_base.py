"""Re-create the demo's embedded base model (src/ponder/assets/demo-base) with ponder's own SFT.

    .venv/bin/python scripts/make_demo_base.py [--out DIR] [--scratch-fraction 0.4] [key=value ...]

Builds the character tokenizer of the task family, a tiny Qwen3-shaped model, SFT data from the
family's *train* split (a `--scratch-fraction` share with the scratchpad, the rest direct), trains
with configs/demo-base-sft.yaml, and reports greedy held-out accuracy of the result.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
from pathlib import Path

import torch

from ponder.config import load_config
from ponder.demo import problem_sets
from ponder.models import Decoder, ModelConfig
from ponder.sft import SFTConfig, train_sft
from ponder.tasks import family
from ponder.tokenizer import build_char_tokenizer

ROOT = Path(__file__).resolve().parents[1]

def shape(hidden: int) -> dict:
    """A Qwen3 shape: 4 layers, 32-wide heads, 2 KV heads, SwiGLU at 3 x hidden."""
    return dict(hidden_size=hidden, intermediate_size=3 * hidden, num_hidden_layers=4,
                num_attention_heads=hidden // 32, num_key_value_heads=2, head_dim=32)


def sft_base(work: Path, tokenizer, max_positions: int, hidden: int, examples: list[tuple[str, str]],
             sft_config: Path, overrides: list[str], out: Path) -> dict:
    """A seeded random model of `shape(hidden)` with `tokenizer`, fine-tuned on the (prompt,
    completion) `examples` with `sft_config` (+ key=value `overrides`), copied to `out`; the SFT
    summary. `work` holds the initial model, the data and the SFT run."""
    shutil.rmtree(work, ignore_errors=True)
    init = work / "init"
    init.mkdir(parents=True)
    tokenizer.save_pretrained(init)
    config = ModelConfig.from_hf_dict({
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": tokenizer.vocab_size,
        "max_position_embeddings": max_positions, "rope_theta": 10000.0, "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True, "eos_token_id": tokenizer.eos_token_id, **shape(hidden)})
    torch.manual_seed(0)
    Decoder(config).save_pretrained(init)
    data = work / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in examples))
    cfg = load_config(SFTConfig, sft_config, [f"model={init}", f"data={data}", f"output_dir={work / 'sft'}", *overrides])
    summary = train_sft(cfg)
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(summary["model_dir"], out)
    return summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "src/ponder/assets/demo-base"))
    ap.add_argument("--work", default=str(ROOT / "out/demo-base"))
    ap.add_argument("--scratch-fraction", type=float, default=0.4)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()

    fam = family("multiply")
    rng = random.Random(0)
    problems, _, _ = problem_sets()  # held-out problems are never fine-tuned on
    examples = [(p.prompt, fam.sft_text(p, rng.random() < args.scratch_fraction)) for p in problems]
    out = Path(args.out)
    summary = sft_base(Path(args.work), build_char_tokenizer(fam.ALPHABET), 256, args.hidden, examples,
                       ROOT / "configs/demo-base-sft.yaml", args.overrides, out)

    from ponder.engine import Engine, SamplingParams
    from ponder.models import from_pretrained
    from ponder.tokenizer import Tokenizer

    model, tok = from_pretrained(out), Tokenizer.from_pretrained(out)
    _, _, held_out = problem_sets()
    done = Engine(model, tok).generate([p.prompt for p in held_out],
                                       params=SamplingParams(max_new_tokens=64, temperature=0))
    correct = [fam.check(c[0].text, p) for p, c in zip(held_out, done)]
    scratch = [c[0].text.startswith("<think></think>") is False for c in done]
    print(json.dumps({"sft": {k: summary[k] for k in ("steps", "seconds", "loss")},
                      "held_out_greedy_accuracy": sum(correct) / len(correct),
                      "scratchpad_share": sum(scratch) / len(scratch),
                      "parameters": sum(p.numel() for p in model.parameters())}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
