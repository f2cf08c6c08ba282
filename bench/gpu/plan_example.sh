#!/usr/bin/env bash
# An example plan for bench/gpu/stage.sh on one H200 (30 device-minutes, ~20 of them for this plan): the default
# recipe on the train split as it stands (v0.15 added 80 + 100 curated train pairs that no training has seen), so dev
# scores it; predict dev and test (the packed attention, the default since v0.15); then the serving load, 16 clients
# then 1, whose report now carries the server's own account of where the time went (server_log: gen_ms, run_ms, the
# engine's ms per step). A release's real plan is kept beside its report (eval/reports/<release>/plan.sh).
set -u
source /root/w/src/bench/gpu/lib.sh
B15=(--set model.base=qwen2.5-coder-1.5b-instruct --set train.select_by=last --set train.save_steps=1000
     --set train.eval_steps=0)
M=$W/runs/q15_N/merged
say "plan start: $(nvidia-smi -L | wc -l) GPUs"
monitor
pull qwen2.5-coder-1.5b-instruct || { finish; exit 1; }
train q15_N 0 "${B15[@]}" || { finish; exit 1; }
pred q15_N 0 $M
servebench $M
finish
