"""The benchmarks' CPU smoke modes run (figures are not asserted: they are measured, on a GPU, in bench/results/)."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


def run_bench(args: list[str], tmp_path) -> subprocess.CompletedProcess:
    """A bench script in a subprocess, offline, its temp files under tmp_path; fails the test on a non-zero exit."""
    done = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "TMPDIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
@pytest.mark.parametrize("args, expected", [
    (["bench/train_throughput.py", "--smoke", "--steps", "3", "--warmup", "1", "--seq-len", "2600"], []),
    # The prefix cache changes no reply (the smoke model runs in float32 on the CPU).
    (["bench/generate_throughput.py", "--smoke", "--prefix-cache-ablation"], ["same reply 6/6", "same reply 3/3"]),
    (["bench/generate_throughput.py", "--smoke", "--random-8b", "--batch-size", "2", "--batch-size", "4"], []),
    # Questions one at a time from the shared prefix: the same replies as without it.
    (["bench/prefix_cache.py", "--smoke"], ["same replies as off 3/3"]),
    # The engine's packed attention against transformers' own: the same replies.
    (["bench/generate_throughput.py", "--smoke", "--decoding", "static-repeat,static-packed,static-packed-dynamic"],
     ["same replies 6/6"]),
])
def test_bench_smoke(args, expected, tmp_path):
    done = run_bench(args, tmp_path)
    assert "x" in done.stdout.splitlines()[-1]  # the closing ratio line
    assert all(e in done.stdout for e in expected), done.stdout[-2000:]


@pytest.mark.slow
def test_train_bench_profiles_and_runs_variants(tmp_path):
    """--profile breaks the profiled steps' time into kernel families; --variant adds a text2sql run with overrides."""
    args = ["bench/train_throughput.py", "--smoke", "--steps", "4", "--warmup", "1", "--seq-len", "2600",
            "--no-baseline", "--profile", "2", "--variant", "nomask:train.drop_padding_mask=false"]
    done = run_bench(args, tmp_path)
    out = done.stdout
    assert "| tiny/text2sql |" in out and "| tiny/text2sql-nomask |" in out and "tiny/baseline" not in out
    assert out.count("kernel family") == 2 and "attention" in out  # one profile per text2sql run
    assert out.count("| host time | share of wall |") == 2 and "| operators (dispatch, autograd) |" in out


@pytest.mark.slow
def test_train_bench_runs_only_the_variants_with_no_defaults(tmp_path):
    args = ["bench/train_throughput.py", "--smoke", "--steps", "2", "--warmup", "1", "--seq-len", "2600",
            "--no-baseline", "--no-defaults", "--variant", "mb1:train.micro_batch_size=1"]
    done = run_bench(args, tmp_path)
    assert "| tiny/text2sql-mb1 |" in done.stdout and "| tiny/text2sql |" not in done.stdout


def test_gpu_session_scripts_parse_and_plan_steps_run_once(tmp_path):
    """bench/gpu: every script parses; a plan's steps (lib.sh) are marked done, so a relaunched plan (go.sh poll)
    skips what finished and retries what failed. `t2s` is replaced by a recorder: the steps' bookkeeping is tested
    here, the commands they run are the CLI's own tests' business."""
    for script in ("stage.sh", "go.sh", "lib.sh", "plan_example.sh"):
        subprocess.run(["bash", "-n", str(REPO / "bench/gpu" / script)], check=True)
    w = tmp_path / "w"
    for d in ("src", "log", "done", "pred", "runs/a"):
        (w / d).mkdir(parents=True)
    (w / "t0").write_text("0\n")
    plan = (f"source {REPO / 'bench/gpu/lib.sh'}\n"
            "t2s() { echo \"$*\" | cut -d' ' -f1 >> $W/calls; [ \"$1\" != model ] || [ -f $W/pull-ok ]; }\n"
            "pull m || true\ntrain a 0\nfinish\n")
    run = lambda: subprocess.run(["bash", "-c", plan], env={**os.environ, "W": str(w)}, capture_output=True, text=True)
    assert run().returncode == 0
    assert (w / "calls").read_text().split() == ["model", "train", "merge"]  # `model pull`, `train`, `merge`
    assert "pull m FAILED" in (w / "log/plan.log").read_text() and (w / "done/ALL").exists()
    (w / "pull-ok").touch()
    assert run().returncode == 0
    assert (w / "calls").read_text().split() == ["model", "train", "merge", "model"]  # only the failed step again
    assert {p.name for p in (w / "done").iterdir()} >= {"pull-m", "train-a", "ALL"}
    # `faster A B`: 1 when decoding path B beat A in genbench's partial results, 0 when not or when B is missing
    (w / "bench/gen").mkdir(parents=True)
    (w / "bench/gen/generate_throughput.partial.json").write_text(json.dumps({"by_decoding": {
        "slow": {"batched": {"predictions_per_s": 3.0}}, "fast": {"batched": {"predictions_per_s": 12.0}}}}))
    faster = lambda a, b: subprocess.run(["bash", "-c", f"source {REPO / 'bench/gpu/lib.sh'}; faster {a} {b}"],
                                         env={**os.environ, "W": str(w)}, capture_output=True, text=True).stdout.strip()
    assert (faster("slow", "fast"), faster("fast", "slow"), faster("slow", "absent")) == ("1", "0", "0")


def test_gpu_session_fails_at_once_on_a_machine_that_cannot_run_the_plan(tmp_path):
    """go.sh exits 3 with one line, before waiting or installing anything: `start` when a carry has not arrived,
    `poll` on a fresh machine (the one that ran the plan was given back after ~30 s idle and its work is gone)."""
    tree, w, g = tmp_path / "tree", tmp_path / "w", tmp_path / "gpu"
    (tree / ".gpu/whl").mkdir(parents=True)
    g.mkdir()
    (tree / ".gpu/whl/carried.txt").write_text("demo.duckdb\nm.gguf.part00\nm.gguf.part01\n")
    (g / "demo.duckdb").touch()
    (g / "m.gguf.part00").touch()
    go = lambda step: subprocess.run(["bash", str(REPO / "bench/gpu/go.sh"), step, "5"], cwd=tree, capture_output=True,
                                     text=True, env={**os.environ, "W": str(w), "G": str(g), "OUT": str(tmp_path)},
                                     timeout=30)
    started = go("start")
    assert (started.returncode, started.stderr) == (3, "go.sh: not on this machine: m.gguf.part01 (carry their .gpu "
                                                       "folders first)\n")
    polled = go("poll")
    assert polled.returncode == 3 and polled.stderr.startswith(f"go.sh: a fresh machine (no {w}/src/plan.sh)")
    assert not w.exists()  # nothing was set up, installed or launched
