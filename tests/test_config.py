import pytest

from text2sql.config import Config, dump_config, load_config
from text2sql.errors import ConfigError


def test_defaults_load():
    cfg = load_config(None)
    assert isinstance(cfg, Config)
    assert cfg.eval.mode == "strict"
    assert set(dump_config(cfg)) >= {"catalog", "data", "model", "train", "eval", "serve"}


def test_repo_config_is_valid():
    from tests.conftest import REPO

    cfg = load_config(REPO / "text2sql.yaml")
    assert cfg.root == REPO
    assert cfg.catalog.name in cfg.catalog.catalogs


def test_unknown_keys_are_all_named(tmp_path):
    path = tmp_path / "text2sql.yaml"
    path.write_text("train:\n  lerning_rate: 1e-4\nfoo:\n  bar: 1\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "train.lerning_rate" in str(err.value) and "'foo'" in str(err.value)


def test_wrong_type_names_key_and_value(tmp_path):
    path = tmp_path / "text2sql.yaml"
    path.write_text("train:\n  max_steps: many\n")
    with pytest.raises(ConfigError, match=r"train\.max_steps: expected int, got 'many'"):
        load_config(path)


def test_bad_enum_and_ratios(tmp_path):
    path = tmp_path / "text2sql.yaml"
    path.write_text("train:\n  method: dpo\ndata:\n  split_ratios: {train: 0.9, test: 0.3}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "train.method" in str(err.value) and "data.split_ratios" in str(err.value)


def test_corrupt_yaml_is_one_line(tmp_path):
    path = tmp_path / "text2sql.yaml"
    path.write_text("catalog:\n  name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML") as err:
        load_config(path)
    assert "\n" not in str(err.value)


def test_overrides_are_typed(tmp_path):
    path = tmp_path / "text2sql.yaml"
    path.write_text("")
    cfg = load_config(path, ["train.max_steps=5", "warehouse.timeout_s=2.5", "serve.port=9001"])
    assert (cfg.train.max_steps, cfg.warehouse.timeout_s, cfg.serve.port) == (5, 2.5, 9001)
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(path, ["oops"])
    with pytest.raises(ConfigError, match="unknown key train.nope"):
        load_config(path, ["train.nope=1"])


def test_relative_paths_resolve_against_the_config_dir(tmp_path):
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "text2sql.yaml"
    path.write_text("catalog:\n  schemas_dir: snap\n")
    cfg = load_config(path)
    assert cfg.path(cfg.catalog.schemas_dir) == (tmp_path / "sub" / "snap").resolve()
