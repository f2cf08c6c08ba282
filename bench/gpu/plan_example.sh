#!/usr/bin/env bash
# An example plan for bench/gpu/stage.sh on an H200 x2 host: the default recipe with seeds 42 and 2 side by side on
# GPU 0 (60 GiB each; side by side they ran at 1.8 s per step each against 1.16 s alone), and the release model fitted
# on train+dev on GPU 1. Final weights (train.select_by=last, no eval loss, one save at the end: dev-EX saves cost
# ~80 s each), merged onto bf16 and predicted on dev and test (the train+dev model on test only). A release's real plan
# is kept beside its report (eval/reports/<release>/plan.sh).
set -u
source /root/w/src/bench/gpu/lib.sh
B15=(--set model.base=qwen2.5-coder-1.5b-instruct --set train.select_by=last --set train.save_steps=1000
     --set train.eval_steps=0 --set train.max_memory_gb=60)
say "plan start: $(nvidia-smi -L | wc -l) GPUs"
monitor
pull qwen2.5-coder-1.5b-instruct || { finish; exit 1; }
( train q15_A 0 "${B15[@]}" && pred q15_A 0 $W/runs/q15_A/merged ) & P0=$!
( train q15_AD 1 "${B15[@]}" --set train.splits=train+dev && mark pred-q15_AD-dev \
  && pred q15_AD 1 $W/runs/q15_AD/merged ) & P1=$!
sleep 30
( train q15_A2 0 "${B15[@]}" --set train.seed=2 && pred q15_A2 0 $W/runs/q15_A2/merged ) & P2=$!
wait $P0 $P1 $P2
finish
