# Steps a GPU plan is made of; a plan (eval/reports/<release>/plan.sh) sources this file, then calls them.
# Every step is idempotent (a mark in $W/done), so `go.sh poll` can relaunch a plan that was stopped.
#   pull MODEL; train NAME GPU [--set ...] (then merges onto bf16); merge_nf4 NAME GPU;
#   pred TAG GPU MODEL_DIR [--set ...] (dev and test); genbench MODEL_DIR DECODINGS (generate_throughput, batch 64);
#   faster A B (prints 1 when decoding path B beat A in genbench); servebench MODEL_DIR [c16] (serve_load at 16
#   clients, then 1 unless c16); monitor (GPU use every minute); finish.
# Runs, models and predictions live under $W=/root/w, outside the carried tree.
W=${W:-/root/w}; cd $W/src
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
export PYTHONPATH=/tmp/site:$W/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 T2S_GGUF_DIR=/root/gpu
T0=$(cat $W/t0)
# Host flags: where runs and models go, the warehouse file and embedding model stage.sh carried, bigger batches.
C=(--set model.models_dir=$W/models --set train.output_dir=$W/runs --set warehouse.engine=duckdb
   --set warehouse.duckdb_path=/root/gpu/demo.duckdb --set data.embedding_model=/root/gpu/minilm
   --set generate.batch_size=64 --set train.max_length=4096)
el() { echo $(( $(date +%s) - T0 )); }
say() { echo "[$(el)s] $*" >> $W/log/plan.log; }
t2s() { python3 -m text2sql.cli "$@"; }
isdone() { [ -f $W/done/$1 ]; }
mark() { touch $W/done/$1; }
pull() { local m=$1; isdone pull-$m && return 0
  t2s model pull $m "${C[@]}" > $W/log/pull-$m.log 2>&1 && { mark pull-$m; say "pulled $m"; } \
    || { say "pull $m FAILED"; tail -3 $W/log/pull-$m.log >> $W/log/plan.log; return 1; }; }
train() { local name=$1 gpu=$2; shift 2; isdone train-$name && return 0
  say "train $name on GPU $gpu: $*"
  CUDA_VISIBLE_DEVICES=$gpu t2s train "${C[@]}" --set train.run_name=$name --force "$@" > $W/log/train-$name.log 2>&1 \
    && { CUDA_VISIBLE_DEVICES=$gpu t2s merge $W/runs/$name >> $W/log/train-$name.log 2>&1; mark train-$name; say "trained+merged $name"; } \
    || { say "train $name FAILED"; mark fail-train-$name; tail -2 $W/log/train-$name.log >> $W/log/plan.log; return 1; }; }
merge_nf4() { local name=$1 gpu=$2; isdone merge-$name && return 0
  CUDA_VISIBLE_DEVICES=$gpu t2s merge $W/runs/$name --onto nf4 --out $W/runs/$name/merged_nf4 >> $W/log/train-$name.log 2>&1 \
    && mark merge-$name || say "merge nf4 $name FAILED"; }
pred() { local tag=$1 gpu=$2 model=$3; shift 3; local s
  for s in dev test; do isdone pred-$tag-$s && continue
    /usr/bin/time -f "$tag-$s wall %e s" -a -o $W/log/pred-times.txt env CUDA_VISIBLE_DEVICES=$gpu python3 -m text2sql.cli \
      predict "${C[@]}" "$@" --model $model --split $s --out $W/pred/$tag-$s.jsonl >> $W/log/pred-$tag.log 2>&1 \
      && mark pred-$tag-$s || say "pred $tag $s FAILED"
  done; say "predicted $tag"; }
genbench() { local model=$1 decodings=$2; isdone gen && return 0; mkdir -p $W/bench/gen; say "generate_throughput $decodings"
  timeout 360 python3 bench/generate_throughput.py --model $model --decoding $decodings --batch-size 64 --single 8 \
    --out $W/bench/gen > $W/log/gen.log 2>&1 || say "generate_throughput rc $?"
  mark gen; say "generate_throughput done"; }
faster() { python3 -c 'import json, sys; d = json.load(open(sys.argv[1]))["by_decoding"]
rate = lambda k: d[k]["batched"]["predictions_per_s"] if k in d else 0
print(int(rate(sys.argv[3]) > rate(sys.argv[2])))' $W/bench/gen/generate_throughput.partial.json "$1" "$2" 2>/dev/null || echo 0; }
servebench() { local model=$1 only=${2:-}; isdone serve && return 0; mkdir -p $W/bench/c16 $W/bench/c1
  # A cold server compiles for ~190 s first (v0.16: a 240 s limit killed the load before it wrote its report).
  timeout 330 python3 bench/serve_load.py --model $model --decoding static --out-dir $W/bench/c16 --requests 960 \
    --max-seconds 75 --concurrency 16 --execute "${C[@]}" > $W/log/serve-c16.log 2>&1 || say "serve c16 rc $?"
  [ "$only" = c16 ] && { mark serve; say "serve bench done (16 clients only)"; return 0; }
  timeout 180 python3 bench/serve_load.py --model $model --decoding static --out-dir $W/bench/c1 --requests 80 \
    --max-seconds 40 --concurrency 1 --execute "${C[@]}" > $W/log/serve-c1.log 2>&1 || say "serve c1 rc $?"
  mark serve; say "serve bench done"; }
monitor() { ( while true; do sleep 60
  echo "[$(el)s] $(nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv,noheader | tr '\n' ' ')" >> $W/log/gpu.log
  done ) & MON=$!; }
finish() { kill ${MON:-} 2>/dev/null; say "plan end"; mark ALL; }
