#!/usr/bin/env bash
# An example plan for bench/gpu/stage.sh on one H200 (30 device-minutes, ~22 of them for this plan): the default
# recipe on the train split as it stands (v0.16 measured 787 pairs at 69.2 % dev / 66.7 % test; the pairs added after
# it are unmeasured), so dev scores it against v0.16's; predict dev and test; then the serving load, 16 clients then
# 1, whose server line now splits the prefills' time (prefill_forward_s, prefill_tokens, ms_per_prefill: v0.16 spent
# 36.8 s of a 55 s 16-client run prefilling). A release's real plan is kept beside its report
# (eval/reports/<release>/plan.sh).
set -u
source /root/w/src/bench/gpu/lib.sh
B15=(--set model.base=qwen2.5-coder-1.5b-instruct --set train.select_by=last --set train.save_steps=1000
     --set train.eval_steps=0)
M=$W/runs/q15_N2/merged
say "plan start: $(nvidia-smi -L | wc -l) GPUs"
monitor
pull qwen2.5-coder-1.5b-instruct || { finish; exit 1; }
train q15_N2 0 "${B15[@]}" || { finish; exit 1; }
pred q15_N2 0 $M
servebench $M
finish
