"""`text2sql train` on two processes (DDP over gloo, CPU only) under torchrun and accelerate launch.

Each launch trains the tiny Llama of tinymodel.py. With T2S_RANK_REPORT set, every rank writes a checksum of
its trainable weights at the end; DDP must leave the same weights on both ranks, equal to the adapter rank 0
saved. Rank 0 alone writes the run dir: one dir, one manifest, each step logged once.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from tinymodel import one_torch_thread

from text2sql.config import load_config
from text2sql.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
# Checkpoint at step 3; no eval inside the short runs (train ends with one).
SETTINGS = ["train.run_name=ddp", "train.save_steps=3", "train.eval_steps=1000"]


def torchrun() -> list[str]:
    # --standalone: a local rendezvous on a free port.
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def accelerate_launch() -> list[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "configs/accelerate/ddp.yaml"),
            "--main_process_port", str(port)]


def launch(launcher: list[str], config_path: Path, settings: list[str], *flags: str) -> subprocess.CompletedProcess:
    """`<launcher> -m text2sql.cli train --set ... [flags]` with CUDA hidden; fails the test on a non-zero exit."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "T2S_RANK_REPORT": "1", "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [*launcher, "-m", "text2sql.cli", "train", "--config", str(config_path), *[a for s in settings for a in ("--set", s)], *flags]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def adapter_sha256(run: Path) -> str:
    """The rank report's checksum, computed from the saved adapter (same order: sorted names, float32 bytes)."""
    import torch
    from safetensors.torch import load_file

    weights = load_file(run / "adapter_model.safetensors")
    digest = hashlib.sha256()
    for name in sorted(weights):
        digest.update(weights[name].to(torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def check_ddp_run(run: Path, steps: int) -> list[dict]:
    """One completed 2-process run dir, written once; the same weights on both ranks. Returns the log."""
    assert sorted(p.name for p in run.parent.iterdir()) == [run.name], "one run dir"
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")], "no leftover temp files"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["global_step"] == steps
    assert manifest["world_size"] == 2

    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == list(range(1, steps + 1)), "each step logged once"
    assert sum("train_runtime" in r for r in log) == len(manifest.get("resumed", [])) + 1

    reports = [json.loads((run / f"rank{k}.json").read_text()) for k in (0, 1)]
    assert [(r["rank"], r["world_size"], r["global_step"]) for r in reports] == [(0, 2, steps), (1, 2, steps)]
    assert reports[0]["trainable_sha256"] == reports[1]["trainable_sha256"], "both ranks hold the same model"
    assert reports[0]["trainable_sha256"] == adapter_sha256(run), "rank 0 saved the model it trained"
    return log


def test_torchrun_trains_one_model_on_two_ranks_and_resumes_on_two(tiny_project):
    from safetensors.torch import load_file

    from text2sql.train import train

    proc = launch(torchrun(), tiny_project, [*SETTINGS, "train.max_steps=3"])
    run = Path(proc.stdout.split()[-1])
    assert run == tiny_project.parent / "runs" / "ddp"
    log = check_ddp_run(run, steps=3)
    assert log[0]["epoch"] == 1.0, "the ranks split the data: 2 x 4 examples per step cover the 8 pairs"
    lora_b = [t for name, t in load_file(run / "adapter_model.safetensors").items() if "lora_B" in name]
    assert lora_b and all(t.abs().sum() > 0 for t in lora_b), "trained (LoRA B starts at zero)"
    for name in ("held_prompts.json", "prompt.json", "train_sample.json", "checkpoint-3"):
        assert (run / name).exists(), name

    # A checkpoint of 2 ranks resumes on 2 ranks only.
    with one_torch_thread(), pytest.raises(ConfigError, match="trained on 2; relaunch with `torchrun --nproc_per_node 2`"):
        train(load_config(tiny_project, [*SETTINGS, "train.max_steps=5"]), resume=True)
    launch(torchrun(), tiny_project, [*SETTINGS, "train.max_steps=5"], "--resume")
    check_ddp_run(run, steps=5)
    manifest = json.loads((run / "manifest.json").read_text())
    assert [r["from"] for r in manifest["resumed"]] == ["checkpoint-3"]


def test_accelerate_launch_with_the_sample_ddp_config(tiny_project):
    # No run_name: both ranks must use rank 0's timestamped dir.
    proc = launch(accelerate_launch(), tiny_project, ["train.save_steps=3", "train.eval_steps=1000", "train.max_steps=2"])
    printed = [line for line in proc.stdout.splitlines() if line.startswith(os.sep)]  # the run dir, one per rank
    assert printed == [str(next((tiny_project.parent / "runs").iterdir()))] * 2, "every rank returns rank 0's dir"
    check_ddp_run(Path(printed[0]), steps=2)


def test_fsdp_without_cuda_is_a_config_error(tiny_project, monkeypatch):
    from text2sql.train import train

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ConfigError, match="FSDP .* needs CUDA GPUs"):
        train(load_config(tiny_project))
    assert not (tiny_project.parent / "runs").exists(), "nothing written before the check"
