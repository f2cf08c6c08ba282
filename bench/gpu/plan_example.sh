#!/usr/bin/env bash
# An example plan for bench/gpu/stage.sh on one H200 (30 device-minutes, ~25 of them for the plan): the release model
# (the default recipe fitted on train+dev, final weights: dev-EX saves cost ~80 s each), merged onto bf16; then the
# decode engine's attention timed on it (transformers' against the packed one, both compiled with symbolic sizes: two
# compiles per path instead of one per batch bucket, ~40 s each in v0.14); predict on test and the serving load (16
# clients, then 1) with the faster one. A release's real plan is kept beside its report (eval/reports/<release>/plan.sh).
set -u
source /root/w/src/bench/gpu/lib.sh
B15=(--set model.base=qwen2.5-coder-1.5b-instruct --set train.select_by=last --set train.save_steps=1000
     --set train.eval_steps=0)
M=$W/runs/q15_AD/merged
say "plan start: $(nvidia-smi -L | wc -l) GPUs"
monitor
pull qwen2.5-coder-1.5b-instruct || { finish; exit 1; }
train q15_AD 0 "${B15[@]}" --set train.splits=train+dev || { finish; exit 1; }
genbench $M static-repeat-dynamic,static-packed-dynamic
export T2S_DYNAMIC_SHAPES=1 T2S_PACKED_GQA=$(faster static-repeat-dynamic static-packed-dynamic)
say "T2S_PACKED_GQA=$T2S_PACKED_GQA"
mark pred-q15_AD-dev  # trained on dev: its dev EX measures nothing
pred q15_AD 0 $M
servebench $M
finish
