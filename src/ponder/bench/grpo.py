"""`ponder bench grpo`: one GRPO step of ponder against one of TRL's GRPOTrainer, same run.

Same weights (a randomly initialised 3.2M-parameter Qwen3 shape saved in HF layout), same char
tokenizer, same prompts (synthetic multiplication), G completions each, the same completion cap,
reward (the task's exact check), loss (dapo, beta 0, one update per batch) and learning rate.
Both run offline on CPU in fp32 with their own defaults for how a batch is split: TRL runs the 64
completions as one micro-batch; ponder as length-sorted micro-batches of `micro_batch_size` (16),
which wastes less compute on padding. The loss and gradient are the same either way (dapo divides
by the whole batch's token count), as the TRL-formula tests check. Prints seconds per step for each (the first step
is warm-up and left out), their ratio, the loss values, and where each step's time goes.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

import torch

from ponder.models import Decoder, ModelConfig
from ponder.tasks import multiply
from ponder.tokenizer import build_char_tokenizer

# The 3.2M Qwen3 shape of the reference figure (hidden 256, 4 layers, GQA 4/2, SwiGLU 768).
SHAPE = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
             intermediate_size=768, tie_word_embeddings=True, rope_theta=1e6)
LR = 1e-5


def correct_reward(prompt, completion, problem):
    return float(multiply.check(completion, problem))


def build(tmp: Path):
    """Save the shared model + tokenizer under tmp/base; return the problems."""
    tok = build_char_tokenizer(multiply.ALPHABET)
    torch.manual_seed(0)
    model = Decoder(ModelConfig(vocab_size=tok.vocab_size, model_type="qwen3", **SHAPE))
    model.save_pretrained(tmp / "base")
    tok.save_pretrained(tmp / "base")
    return model.num_parameters()


def run_ponder(tmp: Path, problems, args) -> dict:
    from ponder.rl import RLConfig, train_rl

    cfg = RLConfig(model=str(tmp / "base"), output_dir=str(tmp / "ponder"), prompts_per_step=args.prompts,
                   group_size=args.group, max_new_tokens=args.max_new_tokens, steps=args.steps, lr=LR,
                   loss_type="dapo", beta=0.0, advantage="grpo", epsilon_high=0.2,
                   eval_every=0, save_every=0, rollback=False,
                   temperature=1.0, device="cpu", seed=0)
    train_rl(cfg, problems=problems, rewards=[correct_reward], progress=False)
    rows = [json.loads(x) for x in (tmp / "ponder" / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "event" not in r and r["step"] >= 1]
    return {
        "step_s": [r["time/step"] for r in rows],
        "generate_s": [r["time/generate"] for r in rows],
        "score_s": [r["time/score"] for r in rows],
        "loss": [r["loss"] for r in rows],
        "completion_len": [r["completion_len"] for r in rows],
    }


def run_trl(tmp: Path, problems, args, reward_fn=correct_reward, lr: float = LR, use_cpu: bool = True) -> dict:
    import warnings

    import transformers
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)

    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(tmp / "base" / "tokenizer.json"),
                                        eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    model = AutoModelForCausalLM.from_pretrained(tmp / "base", dtype=torch.float32)
    if not use_cpu:
        torch.cuda.reset_peak_memory_stats()
    by_prompt = {p.prompt: p for p in problems}

    def reward(prompts, completions, **kwargs):
        return [reward_fn(p, c, by_prompt[p]) for p, c in zip(prompts, completions)]

    n = args.prompts * args.steps
    dataset = Dataset.from_dict({"prompt": [problems[i % len(problems)].prompt for i in range(n)]})
    config = GRPOConfig(
        output_dir=str(tmp / "trl"), per_device_train_batch_size=args.prompts * args.group,
        num_generations=args.group, max_completion_length=args.max_new_tokens, loss_type="dapo", beta=0.0,
        learning_rate=lr, max_steps=args.steps, temperature=1.0, report_to="none", logging_steps=1,
        save_strategy="no", use_cpu=use_cpu, bf16=False, seed=0, disable_tqdm=True, dataloader_num_workers=0,
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=dataset,
                          processing_class=tokenizer)
    timings = {"step_s": [], "generate_s": [], "score_s": [], "loss": [], "completion_len": []}
    spent = {"generate": 0.0, "score": 0.0}

    def timed(name, fn):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[name] += time.perf_counter() - t0
        return wrapper

    trainer._generate = timed("generate", trainer._generate)
    trainer._calculate_rewards = timed("score", trainer._calculate_rewards)

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            spent.update(generate=0.0, score=0.0)
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            timings["step_s"].append(time.perf_counter() - self.t0)
            timings["generate_s"].append(spent["generate"])
            timings["score_s"].append(spent["score"])

        def on_log(self, _args, _state, _control, logs=None, **k):
            if logs and "loss" in logs:
                timings["loss"].append(logs["loss"])
                timings["completion_len"].append(logs.get("completions/mean_length", float("nan")))

    trainer.remove_callback(PrinterCallback)  # its per-step dict would bury the table
    trainer.add_callback(Clock())
    trainer.train()
    return timings


def summarise(t: dict) -> dict:
    """Means over the steps after the first (warm-up)."""
    keep = slice(1, None) if len(t["step_s"]) > 1 else slice(None)

    def mean(xs):
        xs = xs[keep]
        return sum(xs) / len(xs) if xs else float("nan")

    step, gen, score = mean(t["step_s"]), mean(t["generate_s"]), mean(t["score_s"])
    return {"s_per_step": step, "generate_s": gen, "score_s": score, "train_s": step - gen - score,
            "loss": t["loss"], "completion_len": mean(t["completion_len"])}


def main(args) -> int:
    logging.getLogger("ponder.rl").setLevel(logging.ERROR)  # random weights: truncation warnings expected
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        params = build(tmp)
        problems = multiply.generate("train", max(args.prompts * args.steps, args.prompts), seed=0)
        ponder = summarise(run_ponder(tmp, problems, args))
        try:
            trl = summarise(run_trl(tmp, problems, args))
        except ImportError as exc:
            print(f"trl not installed ({exc}): peer skipped (pip install -e '.[test]')")
            trl = None
    result = {"params_M": round(params / 1e6, 2), "prompts": args.prompts, "group": args.group,
              "max_new_tokens": args.max_new_tokens, "steps": args.steps, "loss_type": "dapo", "beta": 0.0,
              "threads": torch.get_num_threads(), "ponder": ponder, "trl": trl,
              "ratio": trl["s_per_step"] / ponder["s_per_step"] if trl else None}
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"GRPO step: {result['params_M']}M-parameter Qwen3 shape, {args.prompts} prompts x {args.group} "
          f"completions, <= {args.max_new_tokens} tokens, dapo loss, beta 0, fp32, {result['threads']} threads; "
          f"means over steps 2..{args.steps}")
    print(f"{'':8} {'s/step':>8} {'generate':>9} {'score':>7} {'train':>7} {'mean len':>9}  loss per step")
    for name, r in (("ponder", ponder), ("trl", trl)):
        if r:
            losses = " ".join(f"{x:+.4f}" for x in r["loss"])
            print(f"{name:8} {r['s_per_step']:8.3f} {r['generate_s']:9.3f} {r['score_s']:7.3f} {r['train_s']:7.3f} "
                  f"{r['completion_len']:9.1f}  {losses}")
    if trl:
        print(f"ratio    {result['ratio']:.2f}x (TRL s/step / ponder s/step)")
    return 0
