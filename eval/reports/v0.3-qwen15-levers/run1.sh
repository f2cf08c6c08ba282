#!/usr/bin/env bash
# Early quality experiments (issue 13): several configs in parallel on one H200, predictions back to $OUT.
set -u
source .gpu/whl/env.sh
W=/root/w; mkdir -p $W/pred $W/log
cp .gpu/whl/exp*.yaml .
T0=$(date +%s)
GG=/root/gpu/qwen2.5-coder-1.5b-instruct.gguf
python3 -m text2sql.cli model pull $GG --set model.models_dir=$W/models > $W/log/pull.log 2>&1 || { tail -20 $W/log/pull.log; exit 1; }
BASE=$W/models/qwen2.5-coder-1.5b-instruct
echo "pulled in $(( $(date +%s) - T0 ))s"; ls $BASE
C="--set model.models_dir=$W/models --set model.base=$BASE --set train.output_dir=$W/runs --set train.max_length=6144"
pred() { local name=$1 cfg=$2 model=$3; shift 3
  for s in dev test; do python3 -m text2sql.cli predict --config $cfg $C --set generate.batch_size=64 "$@" --model $model --split $s --out $W/pred/$name-$s.jsonl >> $W/log/$name.log 2>&1; done
  echo "$name predicted $(( $(date +%s) - T0 ))s"; }
job() { local name=$1 cfg=$2; shift 2
  python3 -m text2sql.cli train --config $cfg $C --set train.run_name=$name "$@" > $W/log/$name.log 2>&1 || { echo "$name train failed"; tail -8 $W/log/$name.log; return; }
  echo "$name trained $(( $(date +%s) - T0 ))s"; pred $name $cfg $W/runs/$name; }
( pred base3 exp.yaml $BASE --set prompt.k_shot=3 ) & J1=$!
( job old exp.yaml --set train.micro_batch_size=4 ) & J2=$!
( job defs exp-defs.yaml --set train.micro_batch_size=4 ) & J3=$!
( job defs_k3 exp-defs.yaml --set train.micro_batch_size=4 --set prompt.k_shot=3 ) & J4=$!
( job defs_full exp-defs.yaml --set train.method=full --set train.learning_rate=2e-5 --set train.num_train_epochs=3 --set train.micro_batch_size=2 ) & J5=$!
( sleep ${LIMIT:-545}; echo "watchdog: stopping"; while true; do pkill -f text2sql.cli; sleep 2; done ) & WD=$!
( sleep 90; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv ) &
wait $J1 $J2 $J3 $J4 $J5
kill $WD 2>/dev/null
for r in $W/runs/*/; do n=$(basename $r); mkdir -p $W/m/$n; cp $r/manifest.json $r/prompt.json $W/m/$n/ 2>/dev/null; done
tar czf $OUT/exp1.tgz -C $W pred log m
echo "total $(( $(date +%s) - T0 ))s"; ls -la $W/pred
