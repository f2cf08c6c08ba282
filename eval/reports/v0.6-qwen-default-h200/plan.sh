#!/usr/bin/env bash
# This GPU session's plan (issues 16, 18, 13), run detached from $W/src; each step marks $W/done/<step>, so a
# relaunch skips what finished. GPU 0: the default recipe trained, merged, predicted, then the serving figures;
# GPU 1: training throughput (1.5B demo, 8B shape); then DDP on both; then a train+dev fit if time is left.
set -u
W=/root/w; cd $W/src
export PYTHONPATH=/tmp/site:$W/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 T2S_GGUF_DIR=/root/gpu
T0=$(cat $W/t0)
el() { echo $(( $(date +%s) - T0 )); }
say() { echo "[$(el)s] $*" >> $W/log/plan.log; }
C=(--set model.models_dir=$W/models --set train.output_dir=$W/runs --set warehouse.engine=duckdb
   --set warehouse.duckdb_path=/root/gpu/demo.duckdb --set data.embedding_model=/root/gpu/minilm
   --set generate.batch_size=64 --set train.max_length=4096)
B15=(--set model.base=qwen2.5-coder-1.5b-instruct)
t2s() { python3 -m text2sql.cli "$@"; }
isdone() { [ -f $W/done/$1 ]; }
mark() { touch $W/done/$1; }
NG=$(nvidia-smi -L | wc -l); G0=0; G1=$(( NG > 1 ? 1 : 0 ))

pull() { local m=$1; isdone pull-$m && return 0
  t2s model pull $m "${C[@]}" > $W/log/pull-$m.log 2>&1 && mark pull-$m && say "pulled $m" || say "pull $m FAILED"; }
train() { local name=$1 gpu=$2; shift 2; isdone train-$name && return 0
  say "train $name on GPU $gpu"
  CUDA_VISIBLE_DEVICES=$gpu t2s train "${C[@]}" --set train.run_name=$name --force "$@" > $W/log/train-$name.log 2>&1 \
    && { CUDA_VISIBLE_DEVICES=$gpu t2s merge $W/runs/$name >> $W/log/train-$name.log 2>&1; mark train-$name; say "trained+merged $name"; } \
    || { say "train $name FAILED"; tail -4 $W/log/train-$name.log >> $W/log/plan.log; return 1; }; }
model_of() { [ -d $W/runs/$1/merged ] && echo $W/runs/$1/merged || echo $W/runs/$1; }
pred() { local tag=$1 gpu=$2 model=$3; shift 3; local s
  for s in dev test; do isdone pred-$tag-$s && continue
    /usr/bin/time -f "$tag-$s wall %e s" -a -o $W/log/pred-times.txt env CUDA_VISIBLE_DEVICES=$gpu python3 -m text2sql.cli predict "${C[@]}" "$@" --model $model --split $s \
      --out $W/pred/$tag-$s.jsonl >> $W/log/pred-$tag.log 2>&1 && mark pred-$tag-$s || say "pred $tag $s FAILED"
  done; say "predicted $tag"; }
servebench() { isdone serve && return 0; local m=$(model_of q15_L); mkdir -p $W/bench/gen $W/bench/c1 $W/bench/c16
  say "generate bench on GPU $G0"
  CUDA_VISIBLE_DEVICES=$G0 timeout 300 python3 bench/generate_throughput.py --model $m --decoding eager,static \
    --batch-size 64 --batch-size 16 --single 8 --out $W/bench/gen > $W/log/genbench.log 2>&1 || say "genbench rc $?"
  say "serve c16 static"
  CUDA_VISIBLE_DEVICES=$G0 timeout 240 python3 bench/serve_load.py --model $m --decoding static --out-dir $W/bench/c16 \
    --requests 320 --concurrency 16 --execute "${C[@]}" --set serve.max_batch_size=16 > $W/log/serve-c16.log 2>&1 || say "serve c16 rc $?"
  say "serve c1 static"
  CUDA_VISIBLE_DEVICES=$G0 timeout 150 python3 bench/serve_load.py --model $m --decoding static --out-dir $W/bench/c1 \
    --requests 60 --concurrency 1 --execute "${C[@]}" > $W/log/serve-c1.log 2>&1 || say "serve c1 rc $?"
  mark serve; say "serve bench done"; }
trainbench() { isdone trainbench && return 0; mkdir -p $W/bench/train; say "train bench qwen15 on GPU $G1"
  CUDA_VISIBLE_DEVICES=$G1 timeout 480 python3 bench/train_throughput.py --only qwen15 --steps 16 --warmup 4 \
    --set model.models_dir=$W/models --results-name train_throughput_qwen15 --out $W/bench/train \
    --variant nolig:train.liger=false --variant mb8:train.micro_batch_size=8 --variant d0:train.lora_dropout=0 \
    --variant mem8:train.max_memory_gb=8 --variant compile:train.compile=true > $W/log/trainbench-qwen15.log 2>&1 \
    || say "trainbench qwen15 rc $?"
  say "train bench 8b on GPU $G1"
  CUDA_VISIBLE_DEVICES=$G1 timeout 560 python3 bench/train_throughput.py --only 8b --steps 10 --warmup 3 \
    --results-name train_throughput_8b --out $W/bench/train --variant mb8:train.micro_batch_size=8 \
    --variant mem8:train.max_memory_gb=8 --variant mem8mb2:train.micro_batch_size=2,train.gradient_checkpointing=true \
    --variant compile:train.compile=true > $W/log/trainbench-8b.log 2>&1 || say "trainbench 8b rc $?"
  mark trainbench; say "train bench done"; }
ddp() { isdone ddp && return 0; say "ddp on both GPUs"; mkdir -p $W/bench/ddp
  OUT=$W/bench/ddp RUNS=/tmp/t2s-ddp STEPS=40 WARMUP=8 EXTRA="--set model.base=qwen2.5-coder-1.5b-instruct --set model.models_dir=$W/models --set train.max_length=4096 --set warehouse.engine=duckdb --set warehouse.duckdb_path=/root/gpu/demo.duckdb --set data.embedding_model=/root/gpu/minilm" \
    timeout 420 bash bench/multi_gpu.sh ddp > $W/log/ddp.log 2>&1 || say "ddp rc $?"
  mark ddp; say "ddp done"; }
fullfit() {  # the default recipe on train + dev (settings were chosen on dev; test scores it)
  isdone fullfit && return 0; rm -rf $W/dsall && cp -r datasets $W/dsall
  python3 - $W/dsall/demo/pairs.jsonl <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
for r in rows:
    if r.get("split") == "dev":
        r["split"] = "train"
open(sys.argv[1], "w").write("".join(json.dumps(r) + "\n" for r in rows))
PY
  train q15_Lall $G0 "${B15[@]}" --set data.datasets_dir=$W/dsall && pred q15_Lall $G0 $(model_of q15_Lall)
  mark fullfit; }

say "plan start: $NG GPUs"
pull qwen2.5-coder-1.5b-instruct
( train q15_L $G0 "${B15[@]}" && pred q15_L $G0 $(model_of q15_L) && pred q15_L5 $G0 $(model_of q15_L) --set generate.num_candidates=5; servebench ) & P0=$!
( trainbench ) & P1=$!
( while true; do sleep 60; echo "[$(el)s] $(nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv,noheader | tr '\n' ' ')" >> $W/log/gpu.log; done ) & MON=$!
wait $P0 $P1
ddp
fullfit
kill $MON 2>/dev/null; say "plan end"; mark ALL
