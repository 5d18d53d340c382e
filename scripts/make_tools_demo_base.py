"""Re-create the tools demo's embedded base model (src/ponder/assets/tools-demo-base) with ponder's SFT.

    .venv/bin/python scripts/make_tools_demo_base.py [--out DIR] [--call-share 0.25] [key=value ...]

Builds the "products" task's character tokenizer (call and output tags as single tokens), a tiny
Qwen3-shaped model (the plain demo's shape), SFT data from the task's *train* split (a
`--call-share` of the examples call the calculator, whatever the kind; the rest answer
directly), trains with configs/tools-demo-base-sft.yaml, and reports the held-out measures of
the result (ponder.demo_tools.measure).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
from pathlib import Path

import torch

from make_demo_base import shape  # the plain demo's model shape (scripts/ is on the path when run)
from ponder.config import load_config
from ponder.demo_tools import SFT_CALL_SHARE, TASK, measure, problem_sets
from ponder.models import Decoder, ModelConfig
from ponder.sft import SFTConfig, train_sft
from ponder.tasks import family
from ponder.tokenizer import build_char_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "src/ponder/assets/tools-demo-base"))
    ap.add_argument("--work", default=str(ROOT / "out/tools-demo-base"))
    ap.add_argument("--call-share", type=float, default=SFT_CALL_SHARE)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()

    fam = family(TASK)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    init = work / "init"
    init.mkdir(parents=True)
    tokenizer = build_char_tokenizer(fam.ALPHABET, fam.SPECIAL_TOKENS)
    tokenizer.save_pretrained(init)
    config = ModelConfig.from_hf_dict({
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": tokenizer.vocab_size,
        "max_position_embeddings": 128, "rope_theta": 10000.0, "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True, "eos_token_id": tokenizer.eos_token_id, **shape(args.hidden)})
    torch.manual_seed(0)
    Decoder(config).save_pretrained(init)

    rng = random.Random(0)
    problems, _, held_out = problem_sets()  # held-out problems are never fine-tuned on
    data = work / "sft.jsonl"
    with data.open("w") as f:
        for p in problems:
            call = rng.random() < args.call_share
            f.write(json.dumps({"prompt": p.prompt, "completion": fam.sft_text(p, call)}) + "\n")

    cfg = load_config(SFTConfig, ROOT / "configs/tools-demo-base-sft.yaml",
                      [f"model={init}", f"data={data}", f"output_dir={work / 'sft'}", *args.overrides])
    summary = train_sft(cfg)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(summary["model_dir"], out)

    from ponder.models import from_pretrained
    from ponder.tokenizer import Tokenizer

    model = from_pretrained(out)
    print(json.dumps({"sft": {k: summary[k] for k in ("steps", "seconds", "loss")},
                      "held_out": measure(model, Tokenizer.from_pretrained(out), held_out),
                      "parameters": sum(p.numel() for p in model.parameters())}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
