"""What importing a module pulls in, checked in a fresh interpreter: the GPU machine has the train extra but neither
DuckDB, pyiceberg nor the serve extra, so what `text2sql train`, `merge`, `predict` and `model pull` import must
not need them at import time (they are imported inside the functions that use them)."""

import subprocess
import sys

import pytest

from tests.conftest import REPO

ABSENT_ON_GPU = ("duckdb", "pyiceberg", "fastapi", "uvicorn", "starlette")
GPU_COMMAND_MODULES = ("text2sql.train", "text2sql.merge", "text2sql.generate", "text2sql.models", "text2sql.prompt",
                       "text2sql.checkpoints", "text2sql.cli")
"""The modules `text2sql train` (with its dev EX callbacks), `merge`, `predict` and `model pull` import."""

WITHOUT_THEM = f"""
import importlib.abc, sys

class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {ABSENT_ON_GPU!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (absent on the GPU machine)", name=name)

sys.meta_path.insert(0, Absent())
"""


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_the_absent_packages_really_are_absent():
    """The finder refuses them, so the test below is not vacuous."""
    for name in ABSENT_ON_GPU:
        result = _python(WITHOUT_THEM + f"import {name}")
        assert result.returncode != 0 and "absent on the GPU machine" in result.stderr, (name, result.stderr)


@pytest.mark.parametrize("module", GPU_COMMAND_MODULES)
def test_gpu_commands_import_without_duckdb_pyiceberg_or_the_serve_extra(module):
    result = _python(WITHOUT_THEM + f"import {module}")
    assert result.returncode == 0, result.stderr[-2000:]
