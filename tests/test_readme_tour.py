"""Every command of the README's tour, as written, on a demo project built in a temp dir (issue 19).

The commands are read from the ```bash blocks of README.md between "## Tour of the commands" and the next
top-level section, and shell-parsed (shlex). What the test does to them, and nothing more:

- optional parts in `[brackets]` are left out (the README says so);
- `<run>` is the run the tour itself trains (`train.run_name: tour` in the project config);
- `text2sql` is this checkout's CLI (`python -m text2sql.cli`), and `NAME=value` before it goes to its environment;
- `text2sql serve` runs in the background on a free port (`serve.port` in the project config) and the README's
  `curl` (run as written, with that port for `localhost:8000`) must get a JSON answer, not a 4xx.

The project is this repo's demo project (text2sql.yaml, datasets/demo, the committed v0.1-base-0shot report),
with the tiny test model as `model.base` (so `model pull` resolves a local dir, and training, merging and
generation take seconds), a small lakehouse scale and a two-step training budget. The files the tour names
exist: `new_pairs.jsonl` (one new pair) and `../shared/data/spider-sample` (a tiny Spider-format benchmark).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import REPO, SMALL_SCALE
from tests.test_spider_import import _make_benchmark

TOUR_START = "## Tour of the commands"
SKIPPED: dict[str, str] = {}
"""Commands (by their first words) not run, with the reason. Empty: every tour command runs."""
OPTIONAL = re.compile(r"\s*\[[^\]]*\]")


def tour_commands(readme: str) -> list[str]:
    """The tour's command lines, optional [parts] removed."""
    start = readme.index(TOUR_START)
    end = readme.index("\n## ", start + len(TOUR_START))
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", readme[start:end], re.S):
        for line in block.splitlines():
            if shlex.split(line, comments=True):
                lines.append(OPTIONAL.sub("", line.split("  #")[0]).strip())
    return lines


def test_the_tour_is_found_and_covers_every_stage():
    commands = [" ".join(shlex.split(c)[:3]) for c in tour_commands((REPO / "README.md").read_text())]
    for expected in ("text2sql config validate", "text2sql lakehouse create", "text2sql query SELECT count(*) FROM sales.orders",
                     "text2sql data import", "text2sql train", "text2sql merge runs/<run>", "text2sql eval compare",
                     "TEXT2SQL_TOKEN=secret text2sql serve", "curl -H Authorization: Bearer secret"):
        assert any(c.startswith(expected) for c in commands), (expected, commands)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _demo_project(root: Path, tiny_model: Path, port: int) -> Path:
    project = root / "proj"
    project.mkdir()
    for name in ("schemas", "datasets/demo", "eval/reports/v0.1-base-0shot"):
        shutil.copytree(REPO / name, project / name)
    cfg = yaml.safe_load((REPO / "text2sql.yaml").read_text())
    cfg["lakehouse"]["scale"] = SMALL_SCALE
    cfg["model"]["base"] = str(tiny_model)
    cfg["prompt"] = {"max_schema_tokens": 256}
    cfg["train"] = {"method": "lora", "run_name": "tour", "max_steps": 2, "per_device_train_batch_size": 4,
                    "eval_steps": 2, "save_steps": 2, "max_length": 2048, "select_by": "last"}
    cfg["generate"] = {"max_new_tokens": 8, "batch_size": 16}
    cfg["serve"] = {"port": port, "torch_threads": 1}
    (project / "text2sql.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (project / "new_pairs.jsonl").write_text(json.dumps(
        {"question": "How many promotions are there in total?", "sql": "SELECT count(*) FROM marketing.promotions"}) + "\n")
    _make_benchmark(root / "shared" / "data" / "spider-sample")
    return project


@pytest.mark.slow
def test_every_tour_command_runs_as_written(tmp_path, tiny_model):
    port = _free_port()
    project = _demo_project(tmp_path, tiny_model, port)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    server = None
    ran = []
    try:
        for line in tour_commands((REPO / "README.md").read_text()):
            words = shlex.split(line.replace("<run>", "tour").replace("localhost:8000", f"localhost:{port}"))
            if any(" ".join(words).startswith(prefix) for prefix in SKIPPED):
                continue
            extra_env = {}
            while "=" in words[0] and not words[0].startswith("-"):
                key, _, value = words.pop(0).partition("=")
                extra_env[key] = value
            if words[0] == "text2sql":
                cmd = [sys.executable, "-m", "text2sql.cli", *words[1:]]
            else:
                cmd = words
            if words[:2] == ["text2sql", "serve"]:
                server = subprocess.Popen(cmd, cwd=project, env={**env, **extra_env}, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.PIPE, text=True)
                _wait_healthy(server, port)
                ran.append(line)
                continue
            started = time.perf_counter()
            done = subprocess.run(cmd, cwd=project, env={**env, **extra_env}, capture_output=True, text=True,
                                  timeout=600)
            print(f"{time.perf_counter() - started:6.1f} s  {line}")  # pytest -s: where the test's time goes
            assert done.returncode == 0, f"{line}\nexit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
            assert "Traceback" not in done.stderr, line
            if words[0] == "curl":
                body = json.loads(done.stdout)
                assert "sql" in body and "valid" in body, body  # an answer, not a 4xx error object
            ran.append(line)
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)
    assert server is not None and len(ran) == len(tour_commands((REPO / "README.md").read_text())) - len(SKIPPED)


def _wait_healthy(server: subprocess.Popen, port: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        assert server.poll() is None, server.stderr.read()[-3000:]
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.2)
