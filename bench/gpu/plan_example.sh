#!/usr/bin/env bash
# An example plan for bench/gpu/stage.sh on one H200 (30 device-minutes, ~25 of them for the plan): the release model
# (the default recipe fitted on train+dev, final weights: dev-EX saves cost ~80 s each), merged onto bf16; then the
# decode engine's attention and compile modes timed on it (transformers' attention against the packed one, both with
# symbolic sizes: two compiles per path instead of one per batch bucket, ~40 s each in v0.14); predict on test and the
# serving load (16 clients, then 1) with the faster path. A release's real plan is kept beside its report
# (eval/reports/<release>/plan.sh).
set -u
source /root/w/src/bench/gpu/lib.sh
B15=(--set model.base=qwen2.5-coder-1.5b-instruct --set train.select_by=last --set train.save_steps=1000
     --set train.eval_steps=0)
M=$W/runs/q15_AD/merged
genbench() { isdone gen && return 0; mkdir -p $W/bench/gen; say "generate_throughput"
  timeout 360 python3 bench/generate_throughput.py --model $M --decoding static-repeat-dynamic,static-packed-dynamic \
    --batch-size 64 --single 8 --out $W/bench/gen > $W/log/gen.log 2>&1 || say "generate_throughput rc $?"
  mark gen; say "generate_throughput done"; }
faster() { python3 - $W/bench/gen/generate_throughput.partial.json <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))["by_decoding"]
rate = lambda k: d[k]["batched"]["predictions_per_s"] if k in d else 0
print(1 if rate("static-packed-dynamic") > rate("static-repeat-dynamic") else 0)
PY
}
servebench() { isdone serve && return 0; mkdir -p $W/bench/c16 $W/bench/c1
  timeout 240 python3 bench/serve_load.py --model $M --decoding static --out-dir $W/bench/c16 --requests 960 \
    --max-seconds 90 --concurrency 16 --execute "${C[@]}" > $W/log/serve-c16.log 2>&1 || say "serve c16 rc $?"
  timeout 180 python3 bench/serve_load.py --model $M --decoding static --out-dir $W/bench/c1 --requests 80 \
    --max-seconds 40 --concurrency 1 --execute "${C[@]}" > $W/log/serve-c1.log 2>&1 || say "serve c1 rc $?"
  mark serve; say "serve bench done"; }
say "plan start: $(nvidia-smi -L | wc -l) GPUs"
monitor
pull qwen2.5-coder-1.5b-instruct || { finish; exit 1; }
train q15_AD 0 "${B15[@]}" --set train.splits=train+dev || { finish; exit 1; }
genbench
export T2S_DYNAMIC_SHAPES=1 T2S_PACKED_GQA=$(faster 2>/dev/null || echo 0); say "T2S_PACKED_GQA=$T2S_PACKED_GQA"
mark pred-q15_AD-dev  # trained on dev: its dev EX measures nothing
pred q15_AD 0 $M
servebench
finish
