#!/usr/bin/env bash
# v0.12 plan: one H200. The default recipe (seed 42) and LoRA rank 64 (alpha 128) side by side on 507 train pairs,
# saves and dev EX every 100 steps (the callback scores the grown dev split, 156 questions); each merged onto bf16
# and predicted on dev and test. Dev (156) chooses.
set -u
W=/root/w; cd $W/src
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
export PYTHONPATH=/tmp/site:$W/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 T2S_GGUF_DIR=/root/gpu
T0=$(cat $W/t0)
el() { echo $(( $(date +%s) - T0 )); }
say() { echo "[$(el)s] $*" >> $W/log/plan.log; }
C=(--set model.models_dir=$W/models --set train.output_dir=$W/runs --set warehouse.engine=duckdb
   --set warehouse.duckdb_path=/root/gpu/demo.duckdb --set data.embedding_model=/root/gpu/minilm
   --set generate.batch_size=64 --set train.max_length=4096)
B15=(--set model.base=qwen2.5-coder-1.5b-instruct --set train.save_steps=100 --set train.eval_steps=100)
t2s() { python3 -m text2sql.cli "$@"; }
isdone() { [ -f $W/done/$1 ]; }
mark() { touch $W/done/$1; }

pull() { local m=$1; isdone pull-$m && return 0
  t2s model pull $m "${C[@]}" > $W/log/pull-$m.log 2>&1 && mark pull-$m && say "pulled $m" || { say "pull $m FAILED"; tail -5 $W/log/pull-$m.log >> $W/log/plan.log; }; }
train() { local name=$1 gpu=$2; shift 2; isdone train-$name && return 0
  say "train $name on GPU $gpu: $*"
  CUDA_VISIBLE_DEVICES=$gpu t2s train "${C[@]}" --set train.run_name=$name --force "$@" > $W/log/train-$name.log 2>&1 \
    && { CUDA_VISIBLE_DEVICES=$gpu t2s merge $W/runs/$name >> $W/log/train-$name.log 2>&1; mark train-$name; say "trained+merged $name"; } \
    || { say "train $name FAILED"; mark fail-train-$name; tail -4 $W/log/train-$name.log >> $W/log/plan.log; return 1; }; }
pred() { local tag=$1 gpu=$2 model=$3; shift 3; local s
  for s in dev test; do isdone pred-$tag-$s && continue
    /usr/bin/time -f "$tag-$s wall %e s" -a -o $W/log/pred-times.txt env CUDA_VISIBLE_DEVICES=$gpu python3 -m text2sql.cli predict "${C[@]}" "$@" --model $model --split $s \
      --out $W/pred/$tag-$s.jsonl >> $W/log/pred-$tag.log 2>&1 && mark pred-$tag-$s || say "pred $tag $s FAILED"
  done; say "predicted $tag"; }

say "plan start: $(nvidia-smi -L | wc -l) GPUs"
pull qwen2.5-coder-1.5b-instruct
( train q15_E 0 "${B15[@]}" && pred q15_E 0 $W/runs/q15_E/merged ) & P0=$!
sleep 40
( train q15_Er64 0 "${B15[@]}" --set train.lora_r=64 --set train.lora_alpha=128 && pred q15_Er64 0 $W/runs/q15_Er64/merged ) & P1=$!
( while true; do sleep 60; echo "[$(el)s] $(nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv,noheader | tr '\n' ' ')" >> $W/log/gpu.log; done ) & MON=$!
wait $P0 $P1
kill $MON 2>/dev/null; say "plan end"; mark ALL
