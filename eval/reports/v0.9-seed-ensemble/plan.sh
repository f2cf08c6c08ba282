#!/usr/bin/env bash
# v0.9 plan: three trainings of the default recipe (seeds 42, 2, 3) and their ensemble measured in one session
# (predict --model L --model L2 --model L3, dev and test); serve with L at 16 and 1 clients (GIL fix, logs kept);
# serve the 3-model ensemble at 1 and 16 clients; predict's compile warm-up apart from decoding; DDP x2 of the
# 1.5B model if time is left.
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


synth() { isdone synth && return 0; rm -rf $W/dsyn2 && cp -r datasets $W/dsyn2 && cp /root/gpu/syn_fewshot_s2.jsonl $W/dsyn2/demo/synthetic.jsonl
  say "synthesize 1000 with few-shot back-translation, L answering"
  CUDA_VISIBLE_DEVICES=$G0 timeout 900 python3 -m text2sql.cli data synthesize demo --n 2000 --seed 3 --keep-unconfirmed \
    --model qwen2.5-coder-1.5b-instruct --answer-model $(model_of q15_L) "${C[@]}" --set data.datasets_dir=$W/dsyn2 \
    > $W/log/synth.log 2>&1 && { mark synth; cp $W/dsyn2/demo/synthetic.jsonl $W/pred/synthetic-fewshot.jsonl; say "synth: $(tail -1 $W/log/synth.log)"; } \
    || { mark fail-synth; say "synth FAILED"; tail -3 $W/log/synth.log >> $W/log/plan.log; }; }
servebench() { isdone serve && return 0; local m=$(model_of q15_L) g=$1; mkdir -p $W/bench/c1 $W/bench/c16
  CUDA_VISIBLE_DEVICES=$g timeout 300 python3 bench/serve_load.py --model $m --decoding static --out-dir $W/bench/c16 \
    --requests 640 --max-seconds 120 --concurrency 16 --execute "${C[@]}" > $W/log/serve-c16.log 2>&1 || say "serve c16 rc $?"
  CUDA_VISIBLE_DEVICES=$g timeout 150 python3 bench/serve_load.py --model $m --decoding static --out-dir $W/bench/c1 \
    --requests 60 --concurrency 1 --execute "${C[@]}" > $W/log/serve-c1.log 2>&1 || say "serve c1 rc $?"
  mark serve; say "serve bench done"; }


servebench_ens() { isdone serve-ens && return 0; mkdir -p $W/bench/e1 $W/bench/e16
  local ms=(--model $(model_of q15_L) --model $(model_of q15_L2) --model $(model_of q15_L3))
  CUDA_VISIBLE_DEVICES=$1 timeout 300 python3 bench/serve_load.py "${ms[@]}" --decoding static --out-dir $W/bench/e1 \
    --requests 40 --concurrency 1 --execute "${C[@]}" > $W/log/serve-e1.log 2>&1 || say "serve ens c1 rc $?"
  CUDA_VISIBLE_DEVICES=$1 timeout 300 python3 bench/serve_load.py "${ms[@]}" --decoding static --out-dir $W/bench/e16 \
    --requests 480 --max-seconds 90 --concurrency 16 --execute "${C[@]}" > $W/log/serve-e16.log 2>&1 || say "serve ens c16 rc $?"
  mark serve-ens; say "serve ensemble bench done"; }
ensemble() { isdone ens && return 0; local s
  for s in dev test; do /usr/bin/time -f "EL3-$s wall %e s" -a -o $W/log/pred-times.txt env CUDA_VISIBLE_DEVICES=$1 \
      python3 -m text2sql.cli predict "${C[@]}" --split $s --model $(model_of q15_L) --model $(model_of q15_L2) \
      --model $(model_of q15_L3) --out $W/pred/q15_EL3-$s.jsonl >> $W/log/pred-q15_EL3.log 2>&1 || say "ensemble $s FAILED"; done
  mark ens; say "ensemble EL3 predicted"; }
ddp() { isdone ddp && return 0; [ $(el) -lt 1250 ] || { say "no time for DDP"; return 0; }
  say "DDP x2 bench of the 1.5B model"; mkdir -p $W/bench/ddp
  OUT=$W/bench/ddp RUNS=$W/ddp STEPS=40 WARMUP=8 EXTRA="--set model.models_dir=$W/models --set model.base=qwen2.5-coder-1.5b-instruct" \
    timeout 420 bash bench/multi_gpu.sh ddp > $W/log/ddp.log 2>&1 || say "ddp rc $?"
  mark ddp; say "DDP done"; }

say "plan start: $NG GPUs"
pull qwen2.5-coder-1.5b-instruct
( train q15_L $G0 "${B15[@]}" && pred q15_L $G0 $(model_of q15_L) && servebench $G0 \
  && waitfor train-q15_L3 && ensemble $G0 ) & P0=$!
( train q15_L2 $G1 "${B15[@]}" --set train.seed=2 && train q15_L3 $G1 "${B15[@]}" --set train.seed=3 \
  && servebench_ens $G1 ) & P1=$!
( while true; do sleep 60; echo "[$(el)s] $(nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv,noheader | tr '\n' ' ')" >> $W/log/gpu.log; done ) & MON=$!
wait $P0 $P1
ddp
kill $MON 2>/dev/null; say "plan end"; mark ALL

# After the plan, four calls by hand on the same host (same C=(...) flags, minus generate.batch_size where a batch is given):
#   L5:     predict --model runs/q15_L/merged --split dev|test --set generate.num_candidates=5 --out pred/q15_L5-<split>.jsonl
#   speed:  predict --model runs/q15_L/merged --split test --set generate.batch_size=8|16|32|64|128 --out pred/q15_Lb<b>-test.jsonl
#   serve:  bench/serve_load.py --model L --model L2 --model L3 --decoding static ... (failed at CUDA-graph capture, twice,
#           the second time with a shared step lock, not kept), then --decoding eager --requests 30 --concurrency 1 --execute
#           for the three and for L alone (bench/results/serve_load_h200_ensemble3_eager_c1.json, serve_load_h200_eager_c1_v09.json)
