"""Third-party output known to be harmless, silenced for `text2sql` commands only.

`quiet_third_party()` is called by the CLI group before any command runs; importing text2sql (as a library,
in tests, in a notebook) changes no warning filter, logger or environment variable. One entry per source,
with why it is harmless (issue 19: a newcomer read these as failures, or as advice to install things).
"""

from __future__ import annotations

import logging
import os
import warnings

HARMLESS_LOG_RECORDS = [
    # bitsandbytes on an AVX512-bf16 CPU: an optional fused kernel from the `kernels` package is missing. The
    # plain CPU path is used instead; we never run 4-bit on a CPU (qlora needs CUDA), so `pip install kernels`
    # would change nothing.
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward"),
]
HARMLESS_WARNINGS = [
    # transformers/TRL/PEFT/accelerate deprecation notices about arguments they pass to each other: not ours to fix,
    # and pinned versions (pyproject.toml) keep them working.
    dict(category=FutureWarning, module=r"(transformers|trl|peft|accelerate)(\.|$)"),
]
QUIET_ENV = {
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",  # datasets' map/filter bars inside SFTTrainer: one per split, no ETA
}


class _DropMessages(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def quiet_third_party() -> None:
    """Apply HARMLESS_LOG_RECORDS, HARMLESS_WARNINGS and QUIET_ENV (a variable the user set is kept)."""
    for logger_name, prefix in HARMLESS_LOG_RECORDS:
        logger = logging.getLogger(logger_name)
        if not any(isinstance(f, _DropMessages) and f.prefix == prefix for f in logger.filters):
            logger.addFilter(_DropMessages(prefix))
    for spec in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", **spec)
    for name, value in QUIET_ENV.items():
        os.environ.setdefault(name, value)
