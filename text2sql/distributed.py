"""Training on several processes (`torchrun`, `accelerate launch`): who this process is, and what only rank 0 does.

Under a launcher every rank runs the whole `text2sql.train.train` recipe; these helpers let the ranks join the
process group early, agree on the run dir (rank 0 picks it, the others receive its answer or its error) and, for
benchmarks, each write a report of their memory, weights checksum and throughput.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from text2sql.errors import Text2SQLError
from text2sql.files import write_atomic

RANK_REPORT_ENV = "T2S_RANK_REPORT"
RANK_REPORT = "rank{rank}.json"
"""Written by every rank at the end of training when $T2S_RANK_REPORT is set: its peak GPU memory, a checksum
of its trainable weights (equal on all DDP ranks), and (step, seconds, tokens) at each log, for benchmarks."""


def fsdp_enabled() -> bool:
    """Whether this process was launched for FSDP (`accelerate launch` with an FSDP config sets ACCELERATE_USE_FSDP)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true", "yes")


def local_rank() -> int:
    """This process's GPU index on its host (LOCAL_RANK, set by the launcher; 0 for a plain process)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def init_distributed(cuda: bool) -> tuple[int, int]:
    """(rank, world size) of this process; under torchrun or accelerate launch it joins the process group here
    (NCCL on GPUs, gloo on CPUs), so that ranks can agree on the run dir before the Trainer exists.
    A single plain process gets (0, 1)."""
    import torch
    from accelerate import PartialState

    if cuda and "LOCAL_RANK" in os.environ:
        torch.cuda.set_device(local_rank())  # before anything touches the GPU: rank k uses GPU k of its host
    state = PartialState(cpu=not cuda)
    # Plain ints: TrainingArguments later resets the shared PartialState (and builds its own on the same group).
    return state.process_index, state.num_processes


def from_rank_zero(rank: int, world_size: int, fn, *args):
    """fn(*args) run on rank 0 only; every rank gets its result, or raises its Text2SQLError."""
    result = None
    if rank == 0:
        try:
            result = fn(*args)
        except Text2SQLError as exc:
            result = exc
    if world_size > 1:
        import torch.distributed as dist

        box = [result]
        dist.broadcast_object_list(box, src=0)
        result = box[0]
    if isinstance(result, Text2SQLError):
        raise result
    return result


def rank_reporter(path: Path, rank: int, world_size: int):
    """A TrainerCallback writing this rank's report (RANK_REPORT) at the end of training."""
    import time

    import torch
    from transformers import TrainerCallback

    marks: list[tuple[int, float, int]] = []
    start = time.perf_counter()

    class RankReport(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                marks.append((state.global_step, time.perf_counter() - start, int(logs.get("num_tokens", 0))))

        def on_train_end(self, args, state, control, model=None, **kwargs):
            digest, count = hashlib.sha256(), 0
            for _, p in sorted(((n, p) for n, p in model.named_parameters() if p.requires_grad), key=lambda item: item[0]):
                t = p.detach()
                t = t.to_local() if hasattr(t, "to_local") else t  # an FSDP2 shard: this rank's part only
                digest.update(t.to("cpu", torch.float32).contiguous().numpy().tobytes())
                count += t.numel()
            cuda = torch.cuda.is_available()
            write_atomic(path, json.dumps({
                "rank": rank, "world_size": world_size, "global_step": state.global_step,
                "device": torch.cuda.get_device_name() if cuda else "cpu",
                "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 3) if cuda else None,
                "peak_reserved_gb": round(torch.cuda.max_memory_reserved() / 2**30, 3) if cuda else None,
                "trainable_params": count, "trainable_sha256": digest.hexdigest(),
                "marks": marks,  # (step, seconds since the callback was made, tokens seen by all ranks)
            }, indent=2) + "\n")

    return RankReport()
