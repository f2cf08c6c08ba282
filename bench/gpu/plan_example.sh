#!/usr/bin/env bash
# An example plan for bench/gpu/stage.sh on one H200 (30 device-minutes, ~23 of them for this plan after the ~3 the
# carries take): the default recipe on the train split as it stands (v0.16 measured 787 pairs at 69.2 % dev / 66.7 %
# test; the 399 added after it, 1,186 in all, are unmeasured: ~890 steps, ~14 minutes), so dev scores it against
# v0.16's; predict dev and test; then the serving load at 16 clients only (1 client met its goal in v0.16), whose
# server line now splits the prefills' time (prefill_forward_s, prefill_tokens, ms_per_prefill: v0.16 spent 36.8 s
# of a 55 s run prefilling, before the prefix-cache fix). A release's real plan is kept beside its report
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
servebench $M c16
finish
