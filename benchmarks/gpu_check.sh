#!/usr/bin/env bash
# Everything this project wants to know from a GPU, in one call of under 8 minutes: the GPU-only
# tests, the step benchmark for the three shapes (BERT-base in fp32 and bf16, GPT-2 medium in bf16,
# LLaMA-7B layers held in bf16, with op counts; BERT-base compiled too, replayed as CUDA graphs,
# and with PST's unfused reference), and the smoke reproduction. Prints the card's name first; every table names it too.
# Usage (repository root, package installed): bash benchmarks/gpu_check.sh [output folder]
set -uo pipefail
out=${1:-gpu-check}
mkdir -p "$out"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg
python -c "import torch; print('device:', torch.cuda.get_device_name(), '| torch', torch.__version__)"
status=0
run() {  # a step that may fail without stopping the others; its output is kept in $out
    local name=$1; shift
    echo "== $name"
    timeout "${LIMIT:-240}" "$@" > "$out/$name.txt" 2>&1 || { echo "   FAILED ($?), see $out/$name.txt"; status=1; }
    tail -n 25 "$out/$name.txt"
}
run gpu-tests python -m pytest -q tests/test_gpu.py tests/test_kernels.py tests/test_semi_structured.py tests/test_compile.py
cd benchmarks
for setting in "bert-base fp32" "bert-base bf16" "gpt2-medium bf16" "llama-7b-layers bf16-weights"; do
    set -- $setting
    run "step-$1-$2" python train_step.py --device cuda --shape "$1" --precision "$2" --steps 5 --warmup 2 \
        --count-ops --json "../$out/step-$1-$2.json"
done
# PST's torch reference beside its fused kernels (the runs above), on the same card.
run step-bert-base-bf16-reference python train_step.py --device cuda --shape bert-base --precision bf16 \
    --methods dense pst --kernels reference --steps 5 --warmup 2 --count-ops --json "../$out/step-bert-base-bf16-reference.json"
# Whole steps (forward, backward, AdamW, the capturable schedule's mask rebuild) replayed as CUDA graphs.
run graphed-bert-base-bf16 python train_step.py --device cuda --shape bert-base --precision bf16 --capturable \
    --methods dense lora pst --steps 10 --warmup 3 --json "../$out/graphed-bert-base-bf16.json"
run compiled-bert-base-bf16 python train_step.py --device cuda --shape bert-base --precision bf16 --compile \
    --methods dense lora pst --steps 5 --warmup 3 --json "../$out/compiled-bert-base-bf16.json"
cd ..
LIMIT=300 run smoke python reproduce.py --all --profile smoke --out "$out/smoke"
exit $status
