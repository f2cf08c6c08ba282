"""The prompt builder: messages, schema pruning, definitions, k-shot retrieval, TRL records, saved settings;
and, with the tiny model, the same prompt bytes in train, predict and serve."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from text2sql.catalog import load_snapshot
from text2sql.config import PromptConfig, load_config
from text2sql.data.definitions import load_definitions, read_definitions
from text2sql.errors import SchemaSnapshotError
from text2sql.prompt import (
    INSTRUCTIONS,
    ExampleIndex,
    PromptBuilder,
    build_example,
    build_messages,
    load_prompt_settings,
    model_prompt_settings,
    save_prompt_settings,
    select_tables,
)


@pytest.fixture(scope="module")
def snapshot(lakehouse_project):
    return load_snapshot(load_config(lakehouse_project / "text2sql.yaml"))


def pair(id, question, sql, db=None):
    return SimpleNamespace(id=id, question=question, sql=sql, db=db)


def test_messages_hold_instructions_schema_examples_and_question(snapshot):
    cfg = PromptConfig(max_schema_tokens=100_000, system="Dates are UTC.")
    example = pair("p-1", "How many stores are there?", "SELECT count(*) FROM core.stores")
    msgs = build_messages(" How many customers are there? ", snapshot, cfg, examples=[example])

    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    system = msgs[0]["content"]
    assert system.startswith(INSTRUCTIONS + "\nDates are UTC.\n\n")
    assert system.endswith(snapshot.ddl())  # the whole schema fits the budget
    assert msgs[1:3] == [{"role": "user", "content": example.question}, {"role": "assistant", "content": example.sql}]
    assert msgs[-1] == {"role": "user", "content": "How many customers are there?"}


def test_example_is_trl_prompt_completion_with_sql_as_assistant_turn(snapshot):
    p = pair("p-1", "How many stores?", "SELECT count(*) FROM core.stores\n")
    record = build_example(p, build_messages(p.question, snapshot, PromptConfig()))
    assert record["prompt"] == build_messages(p.question, snapshot, PromptConfig())
    assert record["completion"] == [{"role": "assistant", "content": "SELECT count(*) FROM core.stores"}]


def test_whole_schema_kept_when_it_fits(snapshot):
    assert select_tables("anything", snapshot, max_tokens=100_000) == sorted(snapshot.tables)


def test_pruning_keeps_named_tables_then_join_neighbours_within_budget(snapshot):
    def size(name):
        return len(snapshot.tables[name].ddl.strip()) // 4 + 1

    budget = size("sales.returns") + size("sales.orders") + size("sales.order_lines") + 5
    kept = select_tables("What is the total refund amount of returns?", snapshot, budget)

    assert "sales.returns" in kept  # named by the question
    assert set(kept) - {"sales.returns"} <= {"sales.orders", "sales.order_lines", "core.products"}  # its joins
    assert sum(size(n) for n in kept) <= budget
    assert kept == sorted(kept)
    assert select_tables("What is the total refund amount of returns?", snapshot, budget) == kept


def test_pruning_matches_plural_words_and_columns(snapshot):
    budget = len(snapshot.tables["core.customers"].ddl) // 4 + 1
    assert select_tables("Which customers have the gold loyalty tier?", snapshot, budget) == ["core.customers"]
    # no table named: ranked by column words (`promo_code` names a column of marketing.promotions only)
    small = len(snapshot.tables["marketing.promotions"].ddl) // 4 + 1
    assert select_tables("list every promo code", snapshot, small) == ["marketing.promotions"]


def test_pruning_keeps_the_first_table_even_over_budget(snapshot):
    assert select_tables("How many stores are there?", snapshot, max_tokens=1) == ["core.stores"]


def test_example_index_ranks_by_overlap_excludes_self_and_other_dbs():
    pool = [
        pair("a", "How many customers are there?", "q1"),
        pair("b", "How many stores are in the north region?", "q2"),
        pair("c", "Total revenue per store", "q3"),
        pair("d", "How many customers signed up in 2024?", "q4", db="other"),
    ]
    index = ExampleIndex(pool)
    assert [p.id for p in index.search("How many stores are there?", 2)] == ["b", "c"]
    assert [p.id for p in index.search("How many customers are there?", 3, exclude_id="zzz")] == ["b", "c"]
    assert [p.id for p in index.search("customers signed up", 1, db="other")] == ["d"]
    assert [p.id for p in index.search("store revenue", 1, exclude_id="c")] == ["b"]
    assert index.search("anything", 0) == []


def test_prompt_settings_round_trip(tmp_path):
    cfg = PromptConfig(max_schema_tokens=300, k_shot=2, system="Be brief.")
    save_prompt_settings(tmp_path, cfg, "demo")
    saved = load_prompt_settings(tmp_path, PromptConfig())
    assert (saved.prompt, saved.dataset, saved.instructions) == (cfg, "demo", INSTRUCTIONS)
    assert saved.source == tmp_path / "prompt.json" and saved.definitions is not None and not saved.definitions
    plain = load_prompt_settings(tmp_path / "none", PromptConfig(k_shot=5))
    assert (plain.prompt, plain.dataset, plain.source, plain.definitions) == (PromptConfig(k_shot=5), None, None, None)


# ---------------------------------------------------------------- definitions and saved settings

DEMO_DEFINITIONS = Path(__file__).resolve().parents[1] / "datasets" / "demo" / "definitions.yaml"


def with_definitions(config_path: Path, text: str | None = None) -> Path:
    """Put the demo definitions.yaml (or `text`) into a project's demo dataset; returns the file."""
    target = config_path.parent / "datasets" / "demo" / "definitions.yaml"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(DEMO_DEFINITIONS.read_text() if text is None else text)
    return target


def test_definitions_follow_the_schema_in_the_system_message(snapshot):
    defs = read_definitions(DEMO_DEFINITIONS)
    question = "What was the net revenue of online orders in FY2025?"
    roomy = build_messages(question, snapshot, PromptConfig(max_schema_tokens=100_000, max_definition_tokens=100_000),
                           definitions=defs)[0]["content"]
    assert roomy.endswith("\n\n" + snapshot.ddl() + "\n\n" + defs.render())
    tight = build_messages(question, snapshot, PromptConfig(max_schema_tokens=100_000, max_definition_tokens=400),
                           definitions=defs)[0]["content"]
    shown = tight.split(snapshot.ddl() + "\n\n", 1)[1]
    assert shown == defs.render(question, 400)
    for term in ("net sales", "online orders", "fiscal calendar", "completed orders"):
        assert f"\n- {term} " in shown or f"\n- {term}:" in shown, term
    assert "customer age" not in shown
    off = build_messages(question, snapshot, PromptConfig(max_schema_tokens=100_000, definitions=False),
                         definitions=defs)[0]["content"]
    assert off.endswith(snapshot.ddl()) and "Business definitions" not in off


def test_a_train_plus_dev_model_retrieves_its_k_shot_examples_from_train_and_dev_at_inference(tiny_project, tmp_path):
    """train.splits: train+dev trains with dev pairs in the k-shot pool; predict and serve rebuild that pool (saved in
    prompt.json), so a question near a dev pair is shown that pair, as in training."""
    from text2sql.data import load_pairs

    cfg = load_config(tiny_project, ["prompt.k_shot=1", "train.splits=train+dev"])
    pool = load_pairs(cfg, "demo", "train") + load_pairs(cfg, "demo", "dev")
    dev_pair = next(p for p in load_pairs(cfg, "demo", "dev") if "gold tier" in p.question)
    builder = PromptBuilder.for_training(cfg, None, pool)
    question = "Count the customers in the gold tier."
    trained = builder.messages(question)
    assert trained[2]["content"] == dev_pair.sql  # the dev pair is the nearest example
    run = tmp_path / "run"
    run.mkdir()
    builder.save(run)
    settings = model_prompt_settings(run, load_config(tiny_project).prompt)
    assert settings.example_splits == ("train", "dev")
    assert PromptBuilder.for_model(load_config(tiny_project), settings, None).messages(question) == trained


def test_a_run_keeps_its_instructions_and_definitions_when_the_sources_change(tiny_project, tmp_path, monkeypatch):
    from text2sql import prompt as prompt_module
    from text2sql.data import load_pairs

    definitions = with_definitions(tiny_project)
    cfg = load_config(tiny_project, ["prompt.k_shot=1", "prompt.max_definition_tokens=150"])
    pair = load_pairs(cfg, "demo", "train")[0]
    builder = PromptBuilder.for_training(cfg, None, load_pairs(cfg, "demo", "train"))
    trained = builder.record(pair)["prompt"]
    assert "Business definitions" in trained[0]["content"] and len(trained) == 4  # system, example, answer, question
    run = tmp_path / "run"
    run.mkdir()
    builder.save(run)

    # Later the instructions are edited in the code and a definition in the file: the run's prompt stays.
    monkeypatch.setattr(prompt_module, "INSTRUCTIONS", "Write SQL.")
    definitions.write_text(definitions.read_text().replace("gross sales minus discounts", "gross sales"))
    cfg = load_config(tiny_project)
    settings = model_prompt_settings(run, cfg.prompt)
    assert settings.definitions.fingerprint != load_definitions(cfg, "demo").fingerprint
    assert PromptBuilder.for_model(cfg, settings, None).messages(pair.question, None, pair.id) == trained
    assert PromptBuilder.for_training(cfg, None, []).messages(pair.question)[0]["content"].startswith("Write SQL.")

    # A prompt.json written before definitions existed: the old instructions, and no definitions.
    payload = json.loads((run / "prompt.json").read_text())
    old = {"prompt": {"max_schema_tokens": 150, "k_shot": 0, "system": ""}, "instructions": "Old words.",
           "dataset": "demo"}
    (run / "prompt.json").write_text(json.dumps(old))
    builder = PromptBuilder.for_model(cfg, model_prompt_settings(run, cfg.prompt), None)
    system = builder.messages(pair.question)[0]["content"]
    assert system.startswith("Old words.\n\n-- ") and "Business definitions" not in system
    assert payload["definitions_fingerprint"] == settings.definitions.fingerprint


def test_training_refuses_definitions_the_schema_does_not_back(tiny_project):
    from text2sql.errors import DataError

    path = with_definitions(tiny_project, "aliases: {o: sales.orders}\ndefinitions:\n"
                                          "  - {term: order total, kind: measure, meaning: m, sql: SUM(o.total)}\n")
    with pytest.raises(DataError, match=rf"{path}: term 'order total': unknown column o.total"):
        PromptBuilder.for_training(load_config(tiny_project), None, [])
    builder = PromptBuilder.for_training(load_config(tiny_project, ["prompt.definitions=false"]), None, [])
    assert "Business definitions" not in builder.messages("How many orders?")[0]["content"]


def test_saved_settings_say_which_project_settings_they_override(tiny_project, tmp_path, capsys):
    cfg = load_config(tiny_project)
    run = tmp_path / "run"
    run.mkdir()
    save_prompt_settings(run, cfg.prompt, "demo")
    PromptBuilder.for_model(cfg, model_prompt_settings(run, cfg.prompt), None)
    assert capsys.readouterr().err == ""
    cfg = load_config(tiny_project, ["prompt.k_shot=3"])
    PromptBuilder.for_model(cfg, model_prompt_settings(run, cfg.prompt), None, who="serve")
    err = capsys.readouterr().err
    assert err.startswith("serve: the model's ") and str(run / "prompt.json") in err
    assert "sets prompt.k_shot=0" in err and "prompt.k_shot=3 is ignored" in err


def test_a_schema_change_since_training_warns_or_refuses(tiny_project, tmp_path, capsys):
    cfg = load_config(tiny_project)
    run = tmp_path / "run"
    run.mkdir()
    save_prompt_settings(run, cfg.prompt, "demo")
    now = load_snapshot(cfg).fingerprint
    (run / "manifest.json").write_text(json.dumps({"schema_fingerprints": {"None": now}}))
    PromptBuilder.for_model(cfg, model_prompt_settings(run, cfg.prompt), None, strict=True)
    assert capsys.readouterr().err == ""

    (run / "manifest.json").write_text(json.dumps({"schema_fingerprints": {"None": "0" * 64}}))
    PromptBuilder.for_model(cfg, model_prompt_settings(run, cfg.prompt), None)
    assert "predict: warning: schemas/ changed since the model was trained" in capsys.readouterr().err
    with pytest.raises(SchemaSnapshotError, match="schemas/ changed since the model was trained.*schema diff"):
        PromptBuilder.for_model(cfg, model_prompt_settings(run, cfg.prompt), None, strict=True)


def test_predict_and_serve_strict_exit_1_when_the_schema_changed(tiny_project, tiny_model, tmp_path):
    import shutil

    from click.testing import CliRunner

    from text2sql.cli import main

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    cfg = load_config(tiny_project)
    save_prompt_settings(model, cfg.prompt, "demo")
    (model / "run_manifest.json").write_text(json.dumps({"schema_fingerprints": {"None": "0" * 64}}))
    result = CliRunner().invoke(main, ["predict", "--model", str(model), "--strict", "--config", str(tiny_project)])
    assert result.exit_code == 1
    assert "error: schemas/ changed since the model was trained" in result.output
    assert not (model / "predictions").exists()
    # serve (upstream mode: the model dir gives tokenizer and prompt settings) refuses before it listens.
    result = CliRunner().invoke(main, ["serve", "--model", str(model), "--upstream", "http://127.0.0.1:9", "--strict",
                                       "--config", str(tiny_project), "--set", "serve.token_env=''"])
    assert result.exit_code == 1 and "error: schemas/ changed since the model was trained" in result.output


@pytest.mark.slow
def test_definitions_reach_train_predict_and_serve_prompts_byte_identically(tiny_model, tmp_path):
    """One run of the tiny model with definitions and k-shot: the tokens TRL trained on before the SQL == what
    predict and serve feed the model, even after definitions.yaml changed and with other --set prompt values."""
    import httpx
    from tests.conftest import build_project
    from tests.test_serve import serving
    from tinymodel import one_torch_thread, pair_records

    from text2sql import generate as generate_module
    from text2sql import prompt as prompt_module
    from text2sql.data import load_pairs
    from text2sql.generate import load_generator, prompts_for
    from text2sql.train import train

    path = build_project(tmp_path / "proj", (
        f"model:\n  base: {tiny_model}\n"
        "prompt:\n  max_schema_tokens: 256\n  k_shot: 1\n  max_definition_tokens: 120\n"
        "train:\n  method: lora\n  max_steps: 1\n  per_device_train_batch_size: 2\n  save_steps: 100\n"
        "  eval_steps: 100\n  logging_steps: 1\n  lora_r: 4\n  lora_alpha: 8\n  max_length: 1024\n"
        "generate:\n  max_new_tokens: 4\n  batch_size: 4\nserve:\n  token_env: ''\n  retries: 0\n"))
    (path.parent / "datasets" / "demo").mkdir(parents=True)
    pairs = path.parent / "datasets" / "demo" / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in pair_records()))
    definitions = with_definitions(path)
    with one_torch_thread():
        run = train(load_config(path, ["train.run_name=defs"]))
    sample = json.loads((run / "train_sample.json").read_text())
    trained_ids = [i for i, label in zip(sample["input_ids"], sample["labels"]) if label == -100]
    assert "Business definitions" in sample["context"]

    definitions.write_text(definitions.read_text().replace("over lines of completed orders", "over all lines"))
    cfg = load_config(path, ["prompt.max_definition_tokens=4000", "prompt.k_shot=0"])
    first = load_pairs(cfg, "demo", "train")[0]
    gen = load_generator(run, cfg)
    predicted = prompt_module.render_prompt(gen.tokenizer, prompts_for(cfg, gen, [first], "demo")[0])
    assert gen.tokenizer(predicted, add_special_tokens=False)["input_ids"] == trained_ids

    seen: list[str] = []
    render = generate_module.render_prompt  # where serve's generation renders chats (imported at generate's top)
    generate_module.render_prompt = lambda tok, messages: seen.append(render(tok, messages)) or seen[-1]
    try:
        with one_torch_thread(), serving(cfg, run) as url:
            assert httpx.post(f"{url}/v1/sql", json={"question": first.question}, timeout=60).status_code == 200
    finally:
        generate_module.render_prompt = render
    assert seen[0] == predicted
