#!/usr/bin/env bash
# An example plan for bench/gpu/stage.sh: two 1.5B QLoRA trainings side by side on one GPU (the defaults, and LoRA
# rank 64), each given its share of the GPU's memory, merged onto bf16 and predicted on dev and test. A release's
# real plan is kept beside its report (eval/reports/<release>/plan.sh).
set -u
source /root/w/src/bench/gpu/lib.sh
B15=(--set model.base=qwen2.5-coder-1.5b-instruct --set train.save_steps=100 --set train.eval_steps=100
     --set train.max_memory_gb=60)
say "plan start: $(nvidia-smi -L | wc -l) GPUs"
monitor
pull qwen2.5-coder-1.5b-instruct || { finish; exit 1; }
( train q15_A 0 "${B15[@]}" && pred q15_A 0 $W/runs/q15_A/merged ) & P0=$!
sleep 30
( train q15_Ar64 0 "${B15[@]}" --set train.lora_r=64 --set train.lora_alpha=128 \
  && pred q15_Ar64 0 $W/runs/q15_Ar64/merged ) & P1=$!
wait $P0 $P1
finish
