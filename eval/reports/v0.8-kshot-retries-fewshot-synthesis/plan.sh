#!/usr/bin/env bash
# v0.8 plan: GPU 0: L trained, predicted with and without generate.retries=1; 1000 synthetic candidates written with
# few-shot back-translation, judged by L; L + confirmed (LS) trained and predicted.
# GPU 1: K3 (L with prompt.k_shot=3 in training and inference) trained, predicted (+retries); serve c16/c1 with L; L5r1.
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
syn_epochs2() {  # over dsyn2
  python3 - $W/dsyn2/demo/synthetic.jsonl $1 <<'PY'
import json, sys
n = sum(1 for l in open(sys.argv[1]) if l.strip() and json.loads(l).get("confirmed"))
n = min(n, int(float(sys.argv[2]) * 264))
print(max(3, round(12 * 264 / (264 + n))))
PY
}
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


synth() { isdone synth && return 0; rm -rf $W/dsyn2 && cp -r datasets $W/dsyn2
  say "synthesize 1000 with few-shot back-translation, L answering"
  CUDA_VISIBLE_DEVICES=$G0 timeout 480 python3 -m text2sql.cli data synthesize demo --n 1000 --seed 2 --keep-unconfirmed \
    --model qwen2.5-coder-1.5b-instruct --answer-model $(model_of q15_L) "${C[@]}" --set data.datasets_dir=$W/dsyn2 \
    > $W/log/synth.log 2>&1 && { mark synth; cp $W/dsyn2/demo/synthetic.jsonl $W/pred/synthetic-fewshot.jsonl; say "synth: $(tail -1 $W/log/synth.log)"; } \
    || { mark fail-synth; say "synth FAILED"; tail -3 $W/log/synth.log >> $W/log/plan.log; }; }
servebench() { isdone serve && return 0; local m=$(model_of q15_L); mkdir -p $W/bench/c1 $W/bench/c16
  CUDA_VISIBLE_DEVICES=$G1 timeout 240 python3 bench/serve_load.py --model $m --decoding static --out-dir $W/bench/c16 \
    --requests 320 --concurrency 16 --execute "${C[@]}" > $W/log/serve-c16.log 2>&1 || say "serve c16 rc $?"
  CUDA_VISIBLE_DEVICES=$G1 timeout 150 python3 bench/serve_load.py --model $m --decoding static --out-dir $W/bench/c1 \
    --requests 60 --concurrency 1 --execute "${C[@]}" > $W/log/serve-c1.log 2>&1 || say "serve c1 rc $?"
  mark serve; say "serve bench done"; }

say "plan start: $NG GPUs"
pull qwen2.5-coder-1.5b-instruct
( train q15_L $G0 "${B15[@]}" && pred q15_L $G0 $(model_of q15_L) && pred q15_Lr1 $G0 $(model_of q15_L) --set generate.retries=1 \
  && synth && isdone synth && { [ $(el) -lt 1250 ] || { say "no time for LS"; false; }; } \
  && train q15_LS $G0 "${B15[@]}" --set data.datasets_dir=$W/dsyn2 --set data.synthetic=confirmed \
       --set data.synthetic_ratio=10 --set train.num_train_epochs=$(syn_epochs2 10) && pred q15_LS $G0 $(model_of q15_LS) ) & P0=$!
( train q15_K3 $G1 "${B15[@]}" --set prompt.k_shot=3 && pred q15_K3 $G1 $(model_of q15_K3) \
  && pred q15_K3r1 $G1 $(model_of q15_K3) --set generate.retries=1 ; \
  waitfor train-q15_L && servebench && pred q15_L5r1 $G1 $(model_of q15_L) --set generate.num_candidates=5 --set generate.retries=1 ) & P1=$!
( while true; do sleep 60; echo "[$(el)s] $(nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv,noheader | tr '\n' ' ')" >> $W/log/gpu.log; done ) & MON=$!
wait $P0 $P1
kill $MON 2>/dev/null; say "plan end"; mark ALL
