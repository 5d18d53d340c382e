#!/usr/bin/env bash
# The CUDA path on a machine with one or more NVIDIA GPUs, in one go (under 10 minutes on one
# H100-class GPU): the memory benchmark on Qwen3-0.6B's real shape (28 layers, random weights)
# against TRL, the loss head alone, bf16, and with two or more GPUs the distributed tests over
# NCCL and step times on 1 and 2 ranks. Figures go to stdout and to $OUT (default out/gpu-check).
#
#   bash scripts/gpu_check.sh            # after `make test` has built .venv
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
run() {  # name, command...: run it, keep its output, go on if it fails
    local name=$1; shift
    echo "=== $name: $*"
    "$@" 2>&1 | tee "$OUT/$name.txt"
    echo "=== $name: exit ${PIPESTATUS[0]}"
}
nvidia-smi | tee "$OUT/nvidia-smi.txt"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'bf16', torch.cuda.is_bf16_supported())"

# 1. Peak CUDA memory and step time of one GRPO step, Qwen3-0.6B (28 layers), ponder vs TRL.
run memory $PY -m ponder bench memory --device cuda --layers 28 --prompts 2 --group 8 --max-new-tokens 256 --steps 2
# 2. The loss head alone: chunked vs [B, T, vocab] at 16 x 512 tokens.
run head $PY -m ponder bench memory --device cuda --layers 28 --head
# 3. The engine on the GPU against transformers, fp32 and bf16, at the 25.7M bench shape.
run generate_fp32 $PY -m ponder bench generate --device cuda --hidden 512 --layers 8 --heads 8 --kv-heads 4 --repeats 3
run generate_bf16 $PY -m ponder bench generate --device cuda --hidden 512 --layers 8 --heads 8 --kv-heads 4 --repeats 3 --dtype bfloat16

# 4. Many GPUs: the gloo tests again, now on NCCL (device auto = cuda:LOCAL_RANK), and step
#    times of the same RL run (Qwen3-0.6B, 28 layers, bf16 autocast) on 1 and 2 ranks.
if [ "$GPUS" -ge 2 ]; then
    run distributed_tests $PY -m pytest -q tests/test_distributed.py
    MODEL="$OUT/qwen3-0.6b-random"
    $PY -c "from pathlib import Path; from ponder.bench.memory import build; build(Path('$OUT/qwen3-0.6b-random').parent / 'tmp-build', 28)" \
        && rm -rf "$MODEL" && mv "$OUT/tmp-build/base" "$MODEL" && rm -rf "$OUT/tmp-build"
    for ranks in 1 2; do
        for parallel in ddp fsdp; do
            [ "$ranks" = 1 ] && [ "$parallel" = fsdp ] && continue
            run "rl_${ranks}rank_${parallel}" $PY -m torch.distributed.run --standalone --nproc_per_node "$ranks" \
                -m ponder train rl /dev/null model="$MODEL" task=multiply:train prompts_per_step=16 group_size=8 \
                max_new_tokens=128 steps=3 eval_every=0 save_every=0 dtype=bfloat16 micro_batch_size=16 \
                gradient_checkpointing=true parallel=$parallel "output_dir=$OUT/rl-${ranks}-${parallel}"
            $PY -c "import json,sys; rows=[json.loads(l) for l in open('$OUT/rl-${ranks}-${parallel}/metrics.jsonl')]; \
print('time/step', [round(r['time/step'], 2) for r in rows if 'time/step' in r])" | tee -a "$OUT/rl_${ranks}rank_${parallel}.txt"
        done
    done
else
    echo "one GPU: the NCCL tests and the 2-rank step times need two"
fi
echo "figures in $OUT"
