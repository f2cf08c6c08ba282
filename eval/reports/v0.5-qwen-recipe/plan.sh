#!/usr/bin/env bash
# This GPU session's plan (issues 13, 14, 16), run detached from $W/src; each step marks $W/done/<step>, so a
# relaunch skips what finished. Four chains, two per GPU; logs in $W/log, predictions in $W/pred, benches in $W/bench.
set -u
W=/root/w; cd $W/src
export PYTHONPATH=/tmp/site:$W/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 T2S_GGUF_DIR=/root/gpu
T0=$(cat $W/t0)
el() { echo $(( $(date +%s) - T0 )); }
say() { echo "[$(el)s] $*" >> $W/log/plan.log; }
C=(--set model.models_dir=$W/models --set train.output_dir=$W/runs --set warehouse.engine=duckdb
   --set warehouse.duckdb_path=/root/gpu/demo.duckdb --set data.embedding_model=/root/gpu/minilm
   --set generate.batch_size=64 --set train.max_length=4096)
B15=(--set model.base=qwen2.5-coder-1.5b-instruct --set train.micro_batch_size=4)
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
datasets_with() {  # $W/<name>: the project's datasets plus the first N synthetic candidates (confirmed only or all)
  local name=$1 which=$2; rm -rf $W/$name; cp -r datasets $W/$name
  python3 - "$W/$name/demo/synthetic.jsonl" "$which" <<'PY'
import json, sys
rows = [json.loads(l) for l in open("/root/gpu/syn_all.jsonl") if l.strip()]
keep = [r for r in rows if r.get("confirmed")] if sys.argv[2] == "confirmed" else rows
open(sys.argv[1], "w").write("".join(json.dumps(r) + "\n" for r in keep))
print(sys.argv[2], len(keep))
PY
}
servebench() { isdone serve && return 0; local m=$(model_of q15_ship); mkdir -p $W/bench; say "serve bench on GPU $G0"
  CUDA_VISIBLE_DEVICES=$G0 timeout 330 python3 bench/serve_load.py --model $m --decoding eager,static --out-dir $W/bench/c16 \
    --requests 200 --concurrency 16 --execute "${C[@]}" > $W/log/serve-c16.log 2>&1 || say "serve c16 rc $?"
  CUDA_VISIBLE_DEVICES=$G0 timeout 150 python3 bench/serve_load.py --model $m --decoding static --out-dir $W/bench/c1 \
    --requests 40 --concurrency 1 --execute "${C[@]}" > $W/log/serve-c1.log 2>&1 || say "serve c1 rc $?"
  mkdir -p $W/bench/gen
  CUDA_VISIBLE_DEVICES=$G0 timeout 200 python3 bench/generate_throughput.py --model $m --decoding eager,static --limit 64 \
    --single 8 --out $W/bench/gen > $W/log/genbench.log 2>&1 || say "genbench rc $?"
  mark serve; say "serve bench done"; }

chainA() {  # GPU 0: the shipped recipe (F) again, same run as the others; then the serving figures on its merged model
  train q15_ship $G0 "${B15[@]}" && pred q15_ship $G0 $(model_of q15_ship)
  servebench
}
chainB() {  # GPU 0: F + the 267 round-trip-confirmed synthetic pairs
  datasets_with ds267 confirmed > $W/log/ds267.log 2>&1
  train q15_syn267 $G0 "${B15[@]}" --set data.datasets_dir=$W/ds267 --set data.synthetic=include \
    --set data.synthetic_ratio=2 --set train.num_train_epochs=6 && pred q15_syn267 $G0 $(model_of q15_syn267)
}
chainC() {  # GPU 1: F + all 2,000 validated synthetic pairs (1,733 unconfirmed)
  datasets_with ds2000 all > $W/log/ds2000.log 2>&1
  train q15_syn2000 $G1 "${B15[@]}" --set data.datasets_dir=$W/ds2000 --set data.synthetic=include \
    --set data.synthetic_ratio=10 --set train.num_train_epochs=2 --set train.save_steps=100 \
    && pred q15_syn2000 $G1 $(model_of q15_syn2000)
}
chainD() {  # GPU 1: F with a lower learning rate for longer (the dev curve was still rising at epoch 8)
  train q15_lr5e4_e12 $G1 "${B15[@]}" --set train.learning_rate=5e-4 --set train.num_train_epochs=12 \
    --set train.save_steps=40 && pred q15_lr5e4_e12 $G1 $(model_of q15_lr5e4_e12)
}
say "plan start: $NG GPUs"
pull qwen2.5-coder-1.5b-instruct
( chainA ) & P0=$!
( chainB ) & P1=$!
( chainC ) & P2=$!
( chainD ) & P3=$!
( while true; do sleep 60; echo "[$(el)s] $(nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv,noheader | tr '\n' ' ')" >> $W/log/gpu.log; done ) & MON=$!
wait $P0 $P1 $P2 $P3; kill $MON 2>/dev/null; say "plan end"; mark ALL
