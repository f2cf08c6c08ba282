#!/usr/bin/env bash
# v0.13 plan (one H200): the default 1.5B recipe, seed 2, final weights, merged; then the decode engine's attention
# measured (eager, transformers' sdpa with key/value heads repeated, the packed matmul attention; batch 64, the
# test split) and the faster static path used for predict (dev, test) and the serving load (16 then 1 client).
set -u
source /root/w/src/bench/gpu/lib.sh
B15=(--set model.base=qwen2.5-coder-1.5b-instruct --set train.select_by=last --set train.save_steps=1000
     --set train.eval_steps=0)
M=$W/runs/q15_S2/merged
genbench() { isdone gen && return 0; mkdir -p $W/bench/gen; say "generate_throughput eager,static-repeat,static-packed"
  timeout 420 python3 bench/generate_throughput.py --model $M --decoding eager,static-repeat,static-packed \
    --batch-size 64 --single 8 --out $W/bench/gen > $W/log/gen.log 2>&1 || say "generate_throughput rc $?"
  mark gen; say "generate_throughput done"; }
packed_wins() { python3 - $W/bench/gen/generate_throughput.partial.json <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))["by_decoding"]
rate = lambda k: d[k]["batched"]["predictions_per_s"] if k in d else 0
print(1 if rate("static-packed") > rate("static-repeat") else 0)
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
train q15_S2 0 "${B15[@]}" --set train.seed=2 || { finish; exit 1; }
genbench
export T2S_PACKED_GQA=$(packed_wins 2>/dev/null || echo 0); say "T2S_PACKED_GQA=$T2S_PACKED_GQA"
pred q15_S2 0 $M
servebench
finish
