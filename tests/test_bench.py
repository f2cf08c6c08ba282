"""The benchmarks' CPU smoke modes run (figures are not asserted: they are measured, on a GPU, in bench/results/)."""

import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow
@pytest.mark.parametrize("args", [
    ["bench/train_throughput.py", "--smoke", "--steps", "3", "--warmup", "1", "--seq-len", "2600"],
    ["bench/generate_throughput.py", "--smoke"],
])
def test_bench_smoke(args, tmp_path):
    done = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=900,
                          env={**__import__("os").environ, "HF_HUB_OFFLINE": "1", "TMPDIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "x" in done.stdout.splitlines()[-1]  # the closing ratio line
