"""Missing optional packages: a one-line `error:` with the pip command and exit 1, never a traceback.

Each case runs the CLI in a fresh interpreter where the package cannot be imported (`sys.modules[name] = None`
makes `import name` raise ImportError, as when it is not installed).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CLI_WITHOUT = "import sys; sys.modules[{module!r}] = None; from text2sql.cli import main; main()"

CASES = [
    ("torch", ["train"]),
    ("trl", ["train"]),
    ("torch", ["predict", "--model", "some-model"]),
    ("transformers", ["predict", "--model", "some-model"]),
    ("torch", ["merge", "."]),
    ("peft", ["merge", "."]),
    ("torch", ["serve", "--model", "some-model"]),
    ("transformers", ["serve", "--model", "some-model", "--upstream", "http://127.0.0.1:9"]),
    ("torch", ["demo"]),
]


@pytest.mark.parametrize("module,args", CASES, ids=[f"{a[0]}-without-{m}" for m, a in CASES])
def test_missing_package_is_one_line_with_the_pip_command(tmp_path, module, args):
    (tmp_path / "text2sql.yaml").write_text("")
    done = subprocess.run([sys.executable, "-c", CLI_WITHOUT.format(module=module), *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 1, done.stderr
    assert done.stderr == f"error: '{module}' is not installed: pip install 'text2sql[train]'\n"
    assert not (tmp_path / "runs").exists() and not (tmp_path / ".lakehouse").exists()


def test_require_returns_the_module_and_chains_the_import_error():
    from text2sql.errors import MissingDependencyError, require

    assert require("json", "train").__name__ == "json"
    with pytest.raises(MissingDependencyError, match=r"^'no_such_module_x' is not installed: pip install 'text2sql\[embed\]'$") as err:
        require("no_such_module_x", "embed")
    assert isinstance(err.value.__cause__, ImportError)
