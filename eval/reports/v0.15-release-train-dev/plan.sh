#!/usr/bin/env bash
# v0.15 plan (one H200): the release model (the default recipe, which dev chose, fitted on train+dev, seed 42, final
# weights), merged onto bf16; the decode engine's attention timed on it (transformers' sdpa against the packed one,
# both compiled with symbolic sizes); predict on test twice with the faster path (a fresh process, then one that
# finds the first one's compiled kernels in the on-disk cache); the serving load, 16 clients then 1, with the
# server's own account of where the time went (request and engine lines of its log).
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
mark pred-q15_AD-dev; mark pred-q15_AD_warm-dev  # trained on dev: its dev EX measures nothing
pred q15_AD 0 $M
pred q15_AD_warm 0 $M
servebench $M
finish
