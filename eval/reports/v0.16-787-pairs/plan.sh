#!/usr/bin/env bash
# v0.16 plan (one H200): the default recipe (seed 42, final weights) on the train split as it stands, 787 pairs:
# v0.15 added 180 curated train pairs no training had seen. Dev scores it against v0.14's S2 (same recipe, 607 pairs);
# test is predicted too, to be scored only if it is the configuration reported. Then the serving load on it, 16
# clients then 1 (not measured since v0.9), with the server's own account of where the time went.
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
