#!/usr/bin/env bash
# Multi-GPU `text2sql train` on one host, through the launchers users run (torchrun, accelerate launch).
#   ddp:  the demo dataset with the project's defaults on SmolLM2-135M (qlora): one GPU as a plain process,
#         then torchrun on 1 and on 2 GPUs; tokens/s of each and the scaling (target: 2 GPUs >= 1.8x one).
#   fsdp: FSDP-QLoRA (configs/accelerate/fsdp_qlora.yaml) of a Llama-3.1-8B-shaped model with random weights
#         (speed and memory do not depend on the values), a few steps; peak GPU memory per rank.
# Every rank writes rank<k>.json into its run dir (T2S_RANK_REPORT=1); bench/multi_gpu_report.py turns
# them into multi_gpu_<part>.{md,json} under $OUT (the run dirs stay in $RUNS: adapters are large).
#
#   source .gpu/whl/env.sh && bash bench/multi_gpu.sh ddp     # nvidia-h200-x2, about 4 min
#   source .gpu/whl/env.sh && bash bench/multi_gpu.sh fsdp    # about 5 min (builds the 8B model once, in /tmp)
#   SMOKE=1 PYTHON=.venv/bin/python bash bench/multi_gpu.sh ddp   # CPU: a tiny random Llama, gloo, a few steps
#   EXTRA="--set model.models_dir=/root/w/models --set model.base=qwen2.5-coder-1.5b-instruct" bash bench/multi_gpu.sh ddp
# EXTRA: more `text2sql` arguments (space-separated) for every call of the ddp part, model pull included.
set -euo pipefail
cd "$(dirname "$0")/.."
part=${1:-all}
py=${PYTHON:-python3}
out=${OUT:-bench/results}
runs=${RUNS:-/tmp/t2s-multi-gpu}
steps=${STEPS:-60}
warmup=${WARMUP:-10}
mkdir -p "$out" "$runs"
# NVLink multicast stays off on shared hosts (the machine's rule); the rest: offline, unbuffered, rank reports.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export T2S_RANK_REPORT=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
common=(--config text2sql.yaml --set model.base=smollm2-135m-instruct --set "train.output_dir=$runs"
        --set train.logging_steps=1 --set train.save_steps=100000 --set train.eval_steps=100000)
one_gpu=0
if [[ -n "${SMOKE:-}" ]]; then
  export CUDA_VISIBLE_DEVICES=""
  one_gpu=""
  steps=${STEPS:-6}
  warmup=${WARMUP:-2}
  tiny="$runs/tiny-random"
  [[ -f "$tiny/config.json" ]] || "$py" -c "import sys; sys.path.insert(0, '.'); from pathlib import Path
from bench.train_throughput import TINY, build_random_model; build_random_model(Path('$tiny'), TINY, cuda=False)"
  common+=(--set "model.base=$tiny" --set train.per_device_train_batch_size=4)
fi
torchrun=("$py" -m torch.distributed.run --standalone)
read -r -a extra <<< "${EXTRA:-}"

if [[ $part == ddp || $part == all ]]; then
  # Convert the GGUF base once, before several ranks would race to do it.
  [[ -n "${SMOKE:-}" ]] || "$py" -m text2sql.cli model pull "${common[@]}" "${extra[@]}"
  rm -rf "$runs/one-gpu" "$runs/ddp-1" "$runs/ddp-2"
  CUDA_VISIBLE_DEVICES=$one_gpu "$py" -m text2sql.cli train "${common[@]}" --set train.max_steps="$steps" \
    --set train.run_name=one-gpu "${extra[@]}"
  CUDA_VISIBLE_DEVICES=$one_gpu "${torchrun[@]}" --nproc_per_node 1 -m text2sql.cli train "${common[@]}" \
    --set train.max_steps="$steps" --set train.run_name=ddp-1 "${extra[@]}"
  "${torchrun[@]}" --nproc_per_node 2 -m text2sql.cli train "${common[@]}" --set train.max_steps="$steps" \
    --set train.run_name=ddp-2 "${extra[@]}"
  "$py" bench/multi_gpu_report.py --warmup "$warmup" --out "$out/multi_gpu_ddp" \
    "$runs/one-gpu" "$runs/ddp-1" "$runs/ddp-2"
fi

if [[ $part == fsdp || $part == all ]]; then
  [[ -z "${SMOKE:-}" ]] || { echo "fsdp needs CUDA GPUs: no smoke mode" >&2; exit 1; }
  model=${MODEL_8B:-/tmp/llama-8b-random}
  [[ -f "$model/config.json" ]] || "$py" -c "import sys; sys.path.insert(0, '.'); from pathlib import Path
from bench.train_throughput import LLAMA_8B, build_random_model; build_random_model(Path('$model'), LLAMA_8B, cuda=True)"
  rm -rf "$runs/fsdp-qlora-8b"
  "$py" -m accelerate.commands.launch --config_file configs/accelerate/fsdp_qlora.yaml --main_process_port 29517 \
    -m text2sql.cli train "${common[@]}" --set "model.base=$model" --set train.method=qlora \
    --set train.max_steps="${FSDP_STEPS:-8}" --set train.run_name=fsdp-qlora-8b
  "$py" bench/multi_gpu_report.py --warmup 2 --out "$out/multi_gpu_fsdp" "$runs/fsdp-qlora-8b"
fi
