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
    with pytest.raises(ConfigError, match="unknown key train.section"):  # a class attribute, not a YAML key
        load_config(path, ["train.section=x"])


def test_relative_paths_resolve_against_the_config_dir(tmp_path):
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "text2sql.yaml"
    path.write_text("catalog:\n  schemas_dir: snap\n")
    cfg = load_config(path)
    assert cfg.path(cfg.catalog.schemas_dir) == (tmp_path / "sub" / "snap").resolve()


# Values out of range: each one the issue found `config validate` accepting, and the checks that used to live in
# serve, train, the lakehouse and dedup. The message names the YAML key whether the value came from the file or --set.
BAD_VALUES = [
    ("generate", "batch_size", 0, "generate.batch_size: must be >= 1, got 0"),
    ("generate", "max_new_tokens", 0, "generate.max_new_tokens: must be >= 1, got 0"),
    ("serve", "max_concurrency", 0, "serve.max_concurrency: must be >= 1, got 0"),
    ("serve", "retries", -1, "serve.retries: must be >= 0, got -1"),
    ("serve", "upstream_timeout_s", 0, "serve.upstream_timeout_s: must be > 0, got 0.0"),
    ("serve", "port", 70000, "serve.port: must be <= 65535, got 70000"),
    ("warehouse", "timeout_s", -1, "warehouse.timeout_s: must be > 0, got -1.0"),
    ("warehouse", "memory_limit", "80%", "warehouse.memory_limit: '80%' is not a size"),
    ("warehouse", "engine", "spark", "warehouse.engine: 'spark' is not one of auto, materialized, iceberg, duckdb"),
    ("prompt", "max_schema_tokens", -5, "prompt.max_schema_tokens: must be >= 1, got -5"),
    ("prompt", "k_shot", -1, "prompt.k_shot: must be >= 0, got -1"),
    ("eval", "split", "tset", "eval.split: 'tset' is not one of train, dev, test, all"),
    ("eval", "mode", "fuzzy", "eval.mode: 'fuzzy' is not one of strict, lenient, set"),
    ("eval", "rel_tol", -0.1, "eval.rel_tol: must be >= 0, got -0.1"),
    ("lakehouse", "scale", 0, "lakehouse.scale: must be > 0, got 0.0"),
    ("data", "dedup_threshold", 1.5, "data.dedup_threshold: must be in (0, 1], got 1.5"),
    ("train", "learning_rate", 0, "train.learning_rate: must be > 0, got 0.0"),
    ("train", "lora_dropout", 1, "train.lora_dropout: must be in [0, 1), got 1.0"),
    ("train", "save_steps", 0, "train.save_steps: must be >= 1, got 0"),
    ("generate", "dtype", "float16", "generate.dtype: 'float16' is not one of auto, float32, bfloat16"),
]


@pytest.mark.parametrize("section,key,value,message", BAD_VALUES, ids=[f"{s}.{k}" for s, k, _, _ in BAD_VALUES])
def test_config_validate_rejects_out_of_range_values_naming_the_yaml_key(tmp_path, section, key, value, message):
    import yaml
    from click.testing import CliRunner

    from text2sql.cli import main

    path = tmp_path / "text2sql.yaml"
    path.write_text(yaml.safe_dump({section: {key: value}}))
    from_file = CliRunner().invoke(main, ["config", "validate", str(path)])
    (tmp_path / "empty.yaml").write_text("")
    from_set = CliRunner().invoke(main, ["config", "validate", str(tmp_path / "empty.yaml"),
                                         "--set", f"{section}.{key}={yaml.safe_dump(value).splitlines()[0]}"])
    for result in (from_file, from_set):
        assert result.exit_code == 1, result.output
        assert result.output.startswith("error: ") and result.output.count("\n") == 1, result.output
        assert message in result.output


def test_packing_without_max_length_is_refused_at_load(tmp_path):
    path = tmp_path / "text2sql.yaml"
    path.write_text("train:\n  packing: true\n  max_length: 0\n")
    with pytest.raises(ConfigError, match=r"train\.max_length: must be >= 1, got 0 \(train\.packing needs it"):
        load_config(path)


def test_neither_steps_nor_epochs_is_refused(tmp_path):
    path = tmp_path / "text2sql.yaml"
    path.write_text("train:\n  max_steps: -1\n  num_train_epochs: 0\n")
    with pytest.raises(ConfigError, match=r"train\.max_steps: set max_steps > 0 or num_train_epochs > 0"):
        load_config(path)
    assert load_config(path, ["train.max_steps=3"]).train.max_steps == 3


def test_every_bad_value_is_reported_at_once(tmp_path):
    path = tmp_path / "text2sql.yaml"
    path.write_text("generate:\n  batch_size: 0\nserve:\n  max_concurrency: 0\n  query_workers: 0\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, ["warehouse.timeout_s=-1", "eval.split=tset"])
    text = str(err.value)
    for key in ("generate.batch_size", "serve.max_concurrency", "serve.query_workers", "warehouse.timeout_s",
                "eval.split"):
        assert key in text, text
    assert "\n" not in text


def test_sections_check_their_values_when_built_in_code():
    from text2sql.config import GenerateConfig, ServeConfig, TrainConfig

    with pytest.raises(ConfigError, match=r"^generate\.batch_size: must be >= 1, got 0$"):
        GenerateConfig(batch_size=0)
    with pytest.raises(ConfigError, match=r"serve\.max_batch_size.*serve\.query_workers"):
        ServeConfig(max_batch_size=0, query_workers=0)
    assert TrainConfig(packing=True, max_length=64).max_length == 64


def test_boundary_values_are_accepted(tmp_path):
    path = tmp_path / "text2sql.yaml"
    path.write_text("serve:\n  port: 0\n  retries: 0\n  torch_threads: 0\neval:\n  split: all\n  workers: 0\n"
                    "data:\n  dedup_threshold: 1.0\nwarehouse:\n  memory_limit: 512MiB\ntrain:\n  micro_batch_size: 0\n")
    cfg = load_config(path)
    assert (cfg.serve.port, cfg.eval.split, cfg.data.dedup_threshold) == (0, "all", 1.0)


def test_serve_refuses_a_bad_setting_before_loading_anything(lakehouse_project):
    """The old serve-only check is now the config's: `serve` fails at load, naming the key."""
    from click.testing import CliRunner

    from text2sql.cli import main

    result = CliRunner().invoke(main, ["serve", "--config", str(lakehouse_project / "text2sql.yaml"),
                                       "--upstream", "http://127.0.0.1:9", "--set", "serve.max_batch_size=0"])
    assert result.exit_code == 1 and "serve.max_batch_size: must be >= 1, got 0" in result.output


def test_exponent_floats_without_a_dot_are_numbers(tmp_path):
    # YAML 1.1 reads `2e-5` as a string; `--set train.learning_rate=2e-5` must still mean 0.00002.
    cfg = load_config(overrides=["train.learning_rate=2e-5", "eval.rel_tol=1E-9"])
    assert cfg.train.learning_rate == pytest.approx(2e-5)
    assert cfg.eval.rel_tol == pytest.approx(1e-9)
    (tmp_path / "text2sql.yaml").write_text("train:\n  learning_rate: 3e-4\n")
    assert load_config(tmp_path / "text2sql.yaml").train.learning_rate == pytest.approx(3e-4)
    with pytest.raises(ConfigError, match="train.learning_rate"):
        load_config(overrides=["train.learning_rate=fast"])
