#!/usr/bin/env bash
# This GPU session's plan (issues 14, 13, 18), run detached from $W/src; each step marks $W/done/<step>, so a
# relaunch skips what finished. GPU 0: the default recipe L trained and merged; L answers v0.4's 2,000 synthetic
# questions again (round trip); L + the confirmed pairs trained and predicted. GPU 1: the 1.5B training bench;
# L with lora_dropout=0 (quality check of the faster setting); L predicted.
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
waitfor() { while [ ! -f $W/done/$1 ] && [ ! -f $W/done/fail-$1 ]; do sleep 5; done; [ -f $W/done/$1 ]; }
NG=$(nvidia-smi -L | wc -l); G0=0; G1=$(( NG > 1 ? 1 : 0 ))

pull() { local m=$1; isdone pull-$m && return 0
  t2s model pull $m "${C[@]}" > $W/log/pull-$m.log 2>&1 && mark pull-$m && say "pulled $m" || say "pull $m FAILED"; }
train() { local name=$1 gpu=$2; shift 2; isdone train-$name && return 0
  say "train $name on GPU $gpu: $*"
  CUDA_VISIBLE_DEVICES=$gpu t2s train "${C[@]}" --set train.run_name=$name --force "$@" > $W/log/train-$name.log 2>&1 \
    && { CUDA_VISIBLE_DEVICES=$gpu t2s merge $W/runs/$name >> $W/log/train-$name.log 2>&1; mark train-$name; say "trained+merged $name"; } \
    || { say "train $name FAILED"; mark fail-train-$name; tail -4 $W/log/train-$name.log >> $W/log/plan.log; return 1; }; }
model_of() { [ -d $W/runs/$1/merged ] && echo $W/runs/$1/merged || echo $W/runs/$1; }
pred() { local tag=$1 gpu=$2 model=$3; shift 3; local s
  for s in dev test; do isdone pred-$tag-$s && continue
    /usr/bin/time -f "$tag-$s wall %e s" -a -o $W/log/pred-times.txt env CUDA_VISIBLE_DEVICES=$gpu python3 -m text2sql.cli predict "${C[@]}" "$@" --model $model --split $s \
      --out $W/pred/$tag-$s.jsonl >> $W/log/pred-$tag.log 2>&1 && mark pred-$tag-$s || say "pred $tag $s FAILED"
  done; say "predicted $tag"; }
reconfirm() { isdone reconfirm && return 0; rm -rf $W/dsyn && cp -r datasets $W/dsyn && cp /root/gpu/syn_all.jsonl $W/dsyn/demo/synthetic.jsonl
  say "reconfirm with L on GPU $G0"
  CUDA_VISIBLE_DEVICES=$G0 timeout 540 python3 -m text2sql.cli data synthesize demo --reconfirm --answer-model $(model_of q15_L) \
    "${C[@]}" --set data.datasets_dir=$W/dsyn > $W/log/reconfirm.log 2>&1 \
    && { mark reconfirm; cp $W/dsyn/demo/synthetic.jsonl $W/pred/synthetic-reconfirmed.jsonl; say "reconfirmed: $(tail -1 $W/log/reconfirm.log)"; } \
    || { mark fail-reconfirm; say "reconfirm FAILED"; tail -3 $W/log/reconfirm.log >> $W/log/plan.log; }; }
syn_epochs() {  # the same pair-passes as L (12 epochs x curated), at least 3 epochs
  python3 - $W/dsyn/demo/synthetic.jsonl $1 <<'PY'
import json, sys
n = sum(1 for l in open(sys.argv[1]) if l.strip() and json.loads(l).get("confirmed"))
n = min(n, int(float(sys.argv[2]) * 264))
print(max(3, round(12 * 264 / (264 + n))))
PY
}
trainbench() { isdone trainbench && return 0; mkdir -p $W/bench/train; say "train bench qwen15 on GPU $G1"
  CUDA_VISIBLE_DEVICES=$G1 timeout 330 python3 bench/train_throughput.py --only qwen15 --steps 16 --warmup 4 \
    --set model.models_dir=$W/models --results-name train_throughput_qwen15 --out $W/bench/train \
    --variant d0:train.lora_dropout=0 --variant compile_nolig:train.compile=true,train.liger=false \
    --variant d0_compile_nolig:train.lora_dropout=0,train.compile=true,train.liger=false > $W/log/trainbench-qwen15.log 2>&1 \
    || say "trainbench qwen15 rc $?"
  mark trainbench; say "train bench done"; }

say "plan start: $NG GPUs"
pull qwen2.5-coder-1.5b-instruct
( train q15_L $G0 "${B15[@]}" && reconfirm && isdone reconfirm \
    && train q15_LC $G0 "${B15[@]}" --set data.datasets_dir=$W/dsyn --set data.synthetic=confirmed \
         --set data.synthetic_ratio=10 --set train.num_train_epochs=$(syn_epochs 10) \
    && pred q15_LC $G0 $(model_of q15_LC) ) & P0=$!
( trainbench; train q15_Ld0 $G1 "${B15[@]}" --set train.lora_dropout=0
  waitfor train-q15_L && pred q15_L $G1 $(model_of q15_L)
  isdone train-q15_Ld0 && pred q15_Ld0 $G1 $(model_of q15_Ld0) ) & P1=$!
( while true; do sleep 60; echo "[$(el)s] $(nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv,noheader | tr '\n' ' ')" >> $W/log/gpu.log; done ) & MON=$!
wait $P0 $P1
kill $MON 2>/dev/null; say "plan end"; mark ALL
