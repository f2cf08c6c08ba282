#!/usr/bin/env bash
# The GPU session's whole plan (issues 13, 14, 16), run detached from $W/src; each step marks $W/done/<step>, so a
# relaunch skips what finished. Two chains, one per GPU; logs in $W/log, predictions in $W/pred, benches in $W/bench.
set -u
W=/root/w; cd $W/src
export PYTHONPATH=/tmp/site:$W/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 T2S_GGUF_DIR=/root/gpu
T0=$(cat $W/t0)
el() { echo $(( $(date +%s) - T0 )); }
say() { echo "[$(el)s] $*" >> $W/log/plan.log; }
C=(--set model.models_dir=$W/models --set train.output_dir=$W/runs --set warehouse.engine=duckdb
   --set warehouse.duckdb_path=/root/gpu/demo.duckdb --set data.embedding_model=/root/gpu/minilm
   --set generate.batch_size=64 --set train.max_length=4096)
B15=(--set model.base=qwen2.5-coder-1.5b-instruct); B05=(--set model.base=qwen2.5-coder-0.5b-instruct)
t2s() { python3 -m text2sql.cli "$@"; }
isdone() { [ -f $W/done/$1 ]; }
mark() { touch $W/done/$1; }
NG=$(nvidia-smi -L | wc -l); G0=0; G1=$(( NG > 1 ? 1 : 0 ))

pull() { local m=$1; isdone pull-$m && return 0
  t2s model pull $m "${C[@]}" > $W/log/pull-$m.log 2>&1 && mark pull-$m && say "pulled $m" || say "pull $m FAILED"; }
train() { local name=$1 gpu=$2; shift 2; isdone train-$name && return 0
  say "train $name on GPU $gpu"
  CUDA_VISIBLE_DEVICES=$gpu t2s train "${C[@]}" --set train.run_name=$name --force "$@" > $W/log/train-$name.log 2>&1 \
    && { CUDA_VISIBLE_DEVICES=$gpu t2s merge $W/runs/$name "${C[@]}" >> $W/log/train-$name.log 2>&1; mark train-$name; say "trained+merged $name"; } \
    || { say "train $name FAILED"; tail -4 $W/log/train-$name.log >> $W/log/plan.log; return 1; }; }
model_of() { [ -d $W/runs/$1/merged ] && echo $W/runs/$1/merged || echo $W/runs/$1; }
pred() { local tag=$1 gpu=$2 model=$3; shift 3; local s
  for s in dev test; do isdone pred-$tag-$s && continue
    /usr/bin/time -f "$tag-$s wall %e s" -a -o $W/log/pred-times.txt env CUDA_VISIBLE_DEVICES=$gpu python3 -m text2sql.cli predict "${C[@]}" "$@" --model $model --split $s \
      --out $W/pred/$tag-$s.jsonl >> $W/log/pred-$tag.log 2>&1 && mark pred-$tag-$s || say "pred $tag $s FAILED"
  done; say "predicted $tag"; }
synth() { isdone synth && return 0; say "synthesize on GPU $G1"
  CUDA_VISIBLE_DEVICES=$G1 t2s data synthesize demo --n 2000 --seed 1 --keep-unconfirmed \
    --model $W/models/qwen2.5-coder-1.5b-instruct "${C[@]}" --set prompt.k_shot=3 > $W/log/synth.log 2>&1 || { say "synth FAILED"; tail -5 $W/log/synth.log >> $W/log/plan.log; }
  mkdir -p $W/syn && cp datasets/demo/synthetic.jsonl $W/syn/all.jsonl 2>/dev/null
  python3 - <<'PY'
import json, shutil, pathlib
W = pathlib.Path("/root/w")
rows = [json.loads(l) for l in (W / "syn/all.jsonl").read_text().splitlines() if l.strip()]
confirmed = [r for r in rows if r.get("confirmed", True)]
for name, keep in (("ds1k", confirmed[:1000]), ("ds3k", rows)):
    target = W / name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree("datasets", target)
    (target / "demo/synthetic.jsonl").write_text("".join(json.dumps(r) + "\n" for r in keep))
    print(name, len(keep), "of", len(rows), "confirmed", len(confirmed))
PY
  say "synth done: $(python3 -c 'import json;r=[json.loads(l) for l in open("/root/w/syn/all.jsonl")];print(len(r),"kept",sum(1 for x in r if x.get("confirmed",True)),"confirmed")' 2>&1)"
  mark synth; }
servebench() { isdone serve && return 0; local m=$(model_of q15_ship); mkdir -p $W/bench; say "serve bench on GPU $G0"
  CUDA_VISIBLE_DEVICES=$G0 timeout 400 python3 bench/serve_load.py --model $m --decoding eager,static --out-dir $W/bench/c16 \
    --requests 400 --concurrency 16 --execute "${C[@]}" > $W/log/serve-c16.log 2>&1 || say "serve c16 rc $?"
  CUDA_VISIBLE_DEVICES=$G0 timeout 200 python3 bench/serve_load.py --model $m --decoding static --out-dir $W/bench/c1 \
    --requests 60 --concurrency 1 --execute "${C[@]}" > $W/log/serve-c1.log 2>&1 || say "serve c1 rc $?"
  CUDA_VISIBLE_DEVICES=$G0 timeout 300 python3 bench/generate_throughput.py --model $m --decoding eager,static \
    --out $W/bench/generate_throughput.json "${C[@]}" > $W/log/genbench.log 2>&1 || say "genbench rc $?"
  mark serve; say "serve bench done"; }

chainA() {  # GPU 0: the shipped recipe, then + confirmed synthetic pairs, candidates, the serving figures
  train q15_ship $G0 "${B15[@]}" --set train.micro_batch_size=4 && pred q15_ship $G0 $(model_of q15_ship)
  while ! isdone synth; do sleep 5; done
  train q15_syn1k $G0 "${B15[@]}" --set train.micro_batch_size=4 --set data.datasets_dir=$W/ds1k \
    --set data.synthetic=include --set data.synthetic_ratio=100 --set train.num_train_epochs=3 --set train.save_steps=80 \
    && pred q15_syn1k $G0 $(model_of q15_syn1k)
  pred q15_ship_c5 $G0 $(model_of q15_ship) --set generate.num_candidates=5
  servebench
}
chainB() {  # GPU 1: synthesis with the base model (3-shot retrieval for the round trip), then + all synthetic pairs
  synth
  train q15_syn3k $G1 "${B15[@]}" --set train.micro_batch_size=4 --set data.datasets_dir=$W/ds3k \
    --set data.synthetic=include --set data.synthetic_ratio=100 --set train.num_train_epochs=2 --set train.save_steps=100 \
    && pred q15_syn3k $G1 $(model_of q15_syn3k)
}
chainC() {  # GPU 0, sharing: base models with k-shot prompts, the 0.5B recipe
  pred base15_k3 $G0 $W/models/qwen2.5-coder-1.5b-instruct --set prompt.k_shot=3
  train q05_ship $G0 "${B05[@]}" --set train.micro_batch_size=4 && pred q05_ship $G0 $(model_of q05_ship)
  pred base05_k3 $G0 $W/models/qwen2.5-coder-0.5b-instruct --set prompt.k_shot=3
}
chainD() {  # GPU 1, sharing: k-shot retrieval during training
  train q15_k3 $G1 "${B15[@]}" --set train.micro_batch_size=2 --set prompt.k_shot=3 && pred q15_k3 $G1 $(model_of q15_k3)
}
say "plan start: $NG GPUs"
pull qwen2.5-coder-1.5b-instruct & pull qwen2.5-coder-0.5b-instruct & wait
( chainA ) & P0=$!
( chainB ) & P1=$!
( chainC ) & P2=$!
( chainD ) & P3=$!
( while true; do sleep 60; echo "[$(el)s] $(nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv,noheader | tr '\n' ' ')" >> $W/log/gpu.log; done ) & MON=$!
wait $P0 $P1 $P2 $P3; kill $MON 2>/dev/null; say "plan end"; mark ALL
