"""Shared fixtures: a real demo lakehouse (pyiceberg SqlCatalog on sqlite) in a temp dir, built once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SMALL_SCALE = 0.05


def write_project(root: Path, extra: str = "") -> Path:
    """A text2sql.yaml for a project rooted at `root` (catalog and warehouse inside it)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "text2sql.yaml").write_text(
        "catalog:\n  name: demo\n  catalogs:\n    demo:\n      type: sql\n"
        "      uri: sqlite:///.lakehouse/catalog.db\n      warehouse: file://.lakehouse/warehouse\n"
        f"lakehouse:\n  scale: {SMALL_SCALE}\n" + extra
    )
    return root / "text2sql.yaml"


@pytest.fixture(scope="session")
def lakehouse_project(tmp_path_factory) -> Path:
    """A project dir with a small demo lakehouse and its schemas/ snapshot. Treat as read-only."""
    root = tmp_path_factory.mktemp("project")
    build_project(root)
    return root


def build_project(root: Path, extra: str = "") -> Path:
    """Build a small demo lakehouse + schemas/ under `root`; returns the config path."""
    from text2sql.catalog import pull_schemas
    from text2sql.config import load_config
    from text2sql.lakehouse import create_lakehouse

    path = write_project(root, extra)
    cfg = load_config(path)
    create_lakehouse(cfg)
    pull_schemas(cfg)
    return path


@pytest.fixture
def project(tmp_path) -> Path:
    """A private small demo project (about a second to build) for tests that change the catalog."""
    build_project(tmp_path / "project")
    return tmp_path / "project"


@pytest.fixture(scope="session")
def tiny_model(lakehouse_project) -> Path:
    """The tiny Llama of tinymodel.py, its tokenizer trained on the demo schemas (built once per process)."""
    from tinymodel import tiny_model_dir

    return tiny_model_dir(str(lakehouse_project / "schemas"))


@pytest.fixture
def tiny_project(tmp_path, lakehouse_project, tiny_model) -> Path:
    """text2sql.yaml of a private project that trains the tiny model on tinymodel.PAIRS."""
    from tinymodel import make_project

    return make_project(tmp_path / "proj", lakehouse_project, tiny_model)
