#!/usr/bin/env bash
# The entry of each GPU call once bench/gpu/stage.sh's folders are carried: `bash .gpu/whl/go.sh start|poll LIMIT_S`.
# start: assemble the embedding model, copy the tree to /root/w/src (outside the carried tree, which the next call
#   replaces), launch plan.sh detached; then poll.
# poll: relaunch plan.sh if it is not running (its steps are idempotent: bench/gpu/lib.sh), wait until it ends or
#   LIMIT_S; pack the plan's predictions, logs and run manifests into $OUT/results.tgz.
# Both fail at once (exit 3) on a machine that cannot run the plan: a machine left idle ~30 s is given back and the
# next call gets a bare one, whose poll would otherwise wait LIMIT_S for nothing.
set -u
W=${W:-/root/w}; G=${G:-/root/gpu}
LIMIT=${2:-540}; T=$(date +%s)
if [ "$1" = poll ] && [ ! -f $W/src/plan.sh ]; then
  echo "go.sh: a fresh machine (no $W/src/plan.sh): the one that ran the plan was given back, and its work with it;" \
    "carry the folders of .gpu/CARRIES again, then go.sh start" >&2; exit 3
fi
if [ "$1" = start ]; then  # stage.sh listed every file the carries before this one bring
  missing=$(while read -r f; do [ -e "$G/$f" ] || printf "%s " "$f"; done < .gpu/whl/carried.txt)
  [ -z "$missing" ] || { echo "go.sh: not on this machine: ${missing}(carry their .gpu folders first)" >&2; exit 3; }
fi
mkdir -p $W/log $W/pred $W/done $W/bench
source .gpu/whl/env.sh >/dev/null 2>&1
launch() { setsid nohup bash $W/src/plan.sh > $W/log/plan.out 2>&1 < /dev/null & }
if [ "$1" = start ]; then
  [ -f $W/t0 ] || date +%s > $W/t0
  if [ ! -d $G/minilm ]; then
    mkdir -p $G/minilm && tar xf $G/minilm-small.tar -C $G/minilm
    cat $G/st.part? > $G/minilm/model.safetensors
    echo "$(cat $G/st.sha256)  $G/minilm/model.safetensors" | sha256sum -c --quiet || echo "minilm sha256 mismatch"
  fi
  rm -rf $W/src && mkdir -p $W/src && tar cf - --exclude=./.gpu --exclude=./.git --exclude=./.venv . | tar xf - -C $W/src
  cp .gpu/whl/plan.sh $W/src/plan.sh
  python3 -c "import duckdb, trl, sqlglot, datasets, gguf, bitsandbytes, liger_kernel, fastapi, uvicorn; print('imports ok')" || exit 1
  launch
fi
if [ "$1" = poll ] && ! pgrep -f "$W/src/plan.sh" >/dev/null && [ ! -f $W/done/ALL ]; then echo "relaunching plan.sh"; launch; fi
while [ ! -f $W/done/ALL ] && [ $(( $(date +%s) - T )) -lt $LIMIT ]; do sleep 10; done
cat $W/log/plan.log; tail -3 $W/log/gpu.log 2>/dev/null; tail -20 $W/log/pred-times.txt 2>/dev/null
for r in $W/runs/*/; do [ -d "$r" ] || continue; n=$(basename $r); mkdir -p $W/m/$n
  cp $r/*.json $r/*.jsonl $W/m/$n/ 2>/dev/null; cp $r/merged/*.json $W/m/$n/ 2>/dev/null; done
tar czf $OUT/results.tgz -C $W pred log bench m done 2>/dev/null; ls -la $OUT
