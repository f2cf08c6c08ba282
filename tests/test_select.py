"""Candidate selection on a real DuckDB (fixed candidates), and one seeded end-to-end run with the tiny model."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from text2sql.config import load_config
from text2sql.errors import ConfigError


@dataclass
class Cand:
    sql: str | None
    logprob: float


@pytest.fixture(scope="module")
def warehouse(lakehouse_project):
    from text2sql.catalog import load_snapshot
    from text2sql.warehouse import QueryRunner

    cfg = load_config(lakehouse_project / "text2sql.yaml")
    snapshot = load_snapshot(cfg)
    with QueryRunner.from_config(cfg, workers=2, snapshot=snapshot) as runner:
        yield runner, snapshot


def test_majority_result_wins_and_invalid_candidates_are_dropped(warehouse):
    from text2sql.select import select_candidate

    runner, snapshot = warehouse
    candidates = [
        Cand("SELECT count(*) FROM core.stores WHERE channel = 'online'", -1.0),  # the likeliest, but alone
        Cand("SELECT nme FROM core.stores", -0.5),  # unknown column: dropped before running
        Cand("SELECT count(*) FROM core.stores", -3.0),
        Cand("DROP TABLE core.stores", -0.1),  # refused
        Cand(None, -0.2),  # no SQL in the reply
        Cand("SELECT count(store_id) AS n FROM core.stores", -2.0),  # same result as #2: a second vote
        Cand("SELECT CAST(store_name AS INTEGER) FROM core.stores", -0.3),  # fails when run
    ]
    selection = select_candidate(candidates, runner, snapshot)
    assert (selection.index, selection.votes, selection.valid, selection.reason) == (5, 2, 3, "majority")
    assert selection.sql == candidates[5].sql  # the likelier of the two that agree
    assert selection.errors[1] == "unknown_column" and selection.errors[3] == "refused"
    assert selection.errors[4] == "no_sql" and selection.errors[6] == "runtime_error"
    assert selection.errors[0] == selection.errors[2] == selection.errors[5] == ""


def test_a_tie_goes_to_the_likelier_candidate_and_no_valid_one_keeps_the_greedy(warehouse):
    from text2sql.select import select_candidates

    runner, snapshot = warehouse
    tie = [Cand("SELECT count(*) FROM core.stores", -4.0), Cand("SELECT count(*) FROM core.products", -1.5),
           Cand("SELECT count(*) FROM core.stores", -5.0), Cand("SELECT count(*) FROM core.products", -9.0)]
    nothing = [Cand("SELECT nope FROM core.stores", -1.0), Cand(None, -2.0)]
    single = [Cand("SELECT count(*) FROM core.stores", -1.0), Cand("SELECT x FROM nowhere", -0.5)]
    got = select_candidates([tie, nothing, single], runner, snapshot)
    assert (got[0].index, got[0].votes, got[0].reason) == (1, 2, "likelihood")
    assert (got[1].index, got[1].sql, got[1].valid, got[1].reason) == (0, "SELECT nope FROM core.stores", 0,
                                                                       "no valid candidate")
    assert (got[2].index, got[2].reason) == (0, "single")


def test_results_group_by_value_not_by_column_name_or_row_order():
    from decimal import Decimal

    from text2sql.select import result_key
    from text2sql.warehouse import QueryResult

    a = QueryResult(["total", "n"], [(Decimal("2.50"), 1), (1.0000000000001, 2)])
    b = QueryResult(["s", "count"], [(1.0, 2), (2.5, 1)])
    assert result_key(a) == result_key(b)
    assert result_key(a) != result_key(QueryResult(["s", "count"], [(1.0, 2), (2.5, 1), (2.5, 1)]))
    assert result_key(a) != result_key(QueryResult(["s"], [(1.0,), (2.5,)]))


@pytest.mark.parametrize(("key", "value", "message"), [
    ("generate.num_candidates", "0", "generate.num_candidates: must be >= 1, got 0"),
    ("generate.temperature", "0", r"generate.temperature: must be > 0, got 0.0"),
    ("generate.top_p", "1.5", r"generate.top_p: must be in \(0, 1\], got 1.5"),
    ("train.select_by", "loss", "train.select_by: 'loss' is not one of auto, dev_ex, last"),
])
def test_bad_selection_settings_name_the_key(tmp_path, key, value, message):
    (tmp_path / "text2sql.yaml").write_text("")
    with pytest.raises(ConfigError, match=message):
        load_config(tmp_path / "text2sql.yaml", [f"{key}={value}"])


# ---------------------------------------------------------------- end to end: tiny model, seeded sampling


def lakehouse_tiny_project(root: Path, lakehouse_project: Path, tiny_model: Path, extra: dict | None = None) -> Path:
    """The tiny training project, reading the shared small lakehouse (read-only) so its SQL can run."""
    from tinymodel import make_project

    path = make_project(root, lakehouse_project, tiny_model)
    config = yaml.safe_load(path.read_text())
    lake = lakehouse_project
    config |= {
        "catalog": {"name": "demo", "catalogs": {"demo": {
            "type": "sql", "uri": f"sqlite:///{lake / '.lakehouse' / 'catalog.db'}",
            "warehouse": (lake / ".lakehouse" / "warehouse").as_uri()}}},
        "warehouse": {"cache_dir": str(lake / ".cache" / "warehouse"), "timeout_s": 5},
        "eval": {"workers": 1},
    }
    for section, values in (extra or {}).items():
        config.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_predict_writes_seeded_candidates_and_eval_selects_among_them(tmp_path, lakehouse_project, tiny_model):
    """The greedy reply comes first with its exact log-probability; the samples repeat with the seed; eval picks
    an answer per question and reports the gain next to the cost."""
    import torch
    from tinymodel import one_torch_thread

    from text2sql.evaluate import evaluate
    from text2sql.generate import Generator, generate, load_generator, predict, prompts_for, stats_path
    from text2sql.prompt import render_prompt

    path = lakehouse_tiny_project(tmp_path / "proj", lakehouse_project, tiny_model,
                                  {"generate": {"num_candidates": 3, "temperature": 1.5, "seed": 7}})
    cfg = load_config(path)
    with one_torch_thread():
        first = predict(cfg, tiny_model, split="test", out=tmp_path / "a.jsonl")
        second = predict(cfg, tiny_model, split="test", out=tmp_path / "b.jsonl")
        records = [json.loads(line) for line in first.read_text().splitlines()]
        assert first.read_text() == second.read_text()  # same seed, same candidates
        greedy = predict(load_config(path, ["generate.num_candidates=1"]), tiny_model, split="test",
                         out=tmp_path / "g.jsonl")
        assert [json.loads(line)["raw"] for line in greedy.read_text().splitlines()] == [r["raw"] for r in records]
        for r in records:
            assert len(r["candidates"]) == 3 and r["candidates"][0]["raw"] == r["raw"] and r["sql"] == r["candidates"][0]["sql"]
        assert len({c["raw"] for r in records for c in r["candidates"][1:]}) > 1  # temperature 1.5: samples differ

        # The greedy reply's log-probability is the sum of the log-softmax of generate's own logits at its tokens.
        from text2sql.data import load_pairs

        gen = load_generator(tiny_model, cfg)
        messages = prompts_for(cfg, gen, load_pairs(cfg, "demo", "test")[:1], "demo")
        prompt = gen.tokenizer(render_prompt(gen.tokenizer, messages[0]), add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            out = gen.model.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False, output_logits=True,
                                     return_dict_in_generate=True, eos_token_id=gen.tokenizer.eos_token_id,
                                     pad_token_id=gen.tokenizer.pad_token_id)
        expected = 0.0
        for logits, token in zip(out.logits, out.sequences[0, len(prompt):].tolist()):
            expected += torch.log_softmax(logits[0].float(), -1)[token].item()
            if token == gen.tokenizer.eos_token_id:
                break
        for prefix_cache in (False, True):
            plain = Generator(gen.model, gen.tokenizer, prompt=gen.prompt, max_new_tokens=16, prefix_cache=prefix_cache)
            generate(plain, messages, logprobs=True)
            assert plain.stats["logprobs"][0] == pytest.approx(expected, abs=1e-3)
        assert records[0]["candidates"][0]["logprob"] == pytest.approx(expected, abs=1e-3)

    stats = json.loads(stats_path(first).read_text())
    assert stats["num_candidates"] == 3 and stats["questions"] == len(records)
    assert 0 < stats["predictions_per_s"] < stats["greedy_predictions_per_s"]

    report = evaluate(cfg, first, dataset="demo", split="test", release="cands")
    selection = report["selection"]
    assert selection["num_candidates"] == 3 and selection["questions"] == len(records)
    assert selection["predictions_per_s"] == stats["predictions_per_s"]
    assert selection["gain"] == pytest.approx(selection["ex_selected"] - selection["ex_greedy"])
    assert "candidate selection" in (Path(report["path"]) / "report.md").read_text()


def test_serve_answers_with_the_result_most_candidates_agree_on(lakehouse_project):
    """Through a real OpenAI-compatible engine: the greedy reply is wrong, two of three samples agree."""
    import httpx
    from test_serve import ScriptedEngine, config, serving

    stores = ["SELECT count(*) AS n FROM core.stores", "SELECT count(store_id) FROM core.stores"]
    cfg = config(lakehouse_project / "text2sql.yaml", "generate.num_candidates=4", "generate.temperature=0.9",
                 "generate.seed=5")
    with ScriptedEngine() as engine, serving(cfg, upstream=engine.url) as url:
        engine.script("SELECT nme FROM core.stores", stores[0], "SELECT count(*) FROM core.products", stores[1])
        body = httpx.post(f"{url}/v1/sql", json={"question": "How many stores?", "execute": True}, timeout=60).json()
        requests = [r["body"] for r in engine.requests]
        truth = httpx.post(f"{url}/v1/sql", json={"question": "?", "execute": True}, timeout=60)  # scripted: stores[1]
    assert body["valid"] is True and body["retried"] is False and body["sql"] in stores
    assert body["rows"] == truth.json()["rows"] and body["rows"][0][0] > 0
    assert len(requests) == 4 and requests[0]["temperature"] == 0 and requests[0]["logprobs"] is True
    assert sorted(r["seed"] for r in requests[1:]) == [5, 6, 7] and {r["temperature"] for r in requests[1:]} == {0.9}


@pytest.mark.slow
def test_predict_retries_failed_answers_with_their_error_as_serve_does(tmp_path, lakehouse_project, tiny_model):
    """generate.retries: an answer that fails the check or the sandbox is asked again with its SQL and error in the
    chat (prompt.correction_messages, the chat serve's retry loop builds); answers that pass are left alone."""
    from tinymodel import one_torch_thread

    from text2sql.catalog import load_snapshot
    from text2sql.data import load_pairs
    from text2sql.generate import extract_sql, generate, load_generator, predict, prompts_for, stats_path
    from text2sql.prompt import correction_messages
    from text2sql.warehouse import judge_reply

    path = lakehouse_tiny_project(tmp_path / "proj", lakehouse_project, tiny_model,
                                  {"generate": {"max_new_tokens": 24}})
    with one_torch_thread():
        plain_file = predict(load_config(path), tiny_model, out=tmp_path / "p.jsonl")
        plain = [json.loads(x) for x in plain_file.read_text().splitlines()]
        cfg = load_config(path, ["generate.retries=2"])
        out = predict(cfg, tiny_model, out=tmp_path / "r.jsonl")
        records = [json.loads(x) for x in out.read_text().splitlines()]
        snapshot = load_snapshot(cfg)
        failing = [i for i, r in enumerate(plain) if not judge_reply(r["sql"], snapshot)[1].ok]
        assert failing, "the tiny model's replies are not SQL: every answer should need a retry"
        assert [i for i, r in enumerate(records) if r.get("attempts")] == failing
        for p, r in zip(plain, records):
            if not r.get("attempts"):
                assert r == p  # a passing answer is not asked again
                continue
            assert r["attempts"][0]["sql"] == (judge_reply(p["sql"], snapshot)[0] or p["sql"] or p["raw"])
            assert 1 <= len(r["attempts"]) <= 2 and r["sql"] == extract_sql(r["raw"])
        # The first retry's reply is the greedy reply to the correction chat built from the first failure.
        i = failing[0]
        gen = load_generator(tiny_model, cfg)
        chat = prompts_for(cfg, gen, load_pairs(cfg, "demo", "test"), "demo")[i]
        first = records[i]["attempts"][0]
        retry = correction_messages(chat, first["sql"], first["error_kind"], first["error"])
        expected = generate(gen, [retry])[0]
        assert (records[i]["attempts"][1]["sql"] if len(records[i]["attempts"]) > 1 else None) in (
            None, judge_reply(extract_sql(expected), snapshot)[0] or extract_sql(expected) or expected)
        if len(records[i]["attempts"]) == 1:
            assert records[i]["raw"] == expected
    stats = json.loads(stats_path(out).read_text())
    assert stats["retries"] == 2 and stats["retried"] == len(failing) and stats["retry_seconds"] > 0
    with one_torch_thread():  # with candidates, predict selects first and corrects the chosen answer
        both = predict(load_config(path, ["generate.retries=1", "generate.num_candidates=2"]), tiny_model,
                       out=tmp_path / "x.jsonl")
    for r in map(json.loads, both.read_text().splitlines()):
        answers = {c["sql"] for c in r["candidates"]} | {judge_reply(c["sql"], snapshot)[0] or c["sql"] or c["raw"]
                                                           for c in r["candidates"]}
        assert "selection" in r and r.get("attempts", [{}])[0].get("sql", r["sql"]) in answers
    with pytest.raises(ConfigError, match="retries: must be >= 0"):
        load_config(path, ["generate.retries=-1"])


def test_predict_with_several_models_writes_each_and_their_answers_as_candidates(tmp_path, lakehouse_project,
                                                                                tiny_model):
    """`predict --model A --model B --out F`: each model's own file (byte-identical to predicting with it alone),
    and F with one candidate per model, in order, that eval selects among."""
    from click.testing import CliRunner
    from tinymodel import one_torch_thread

    from text2sql.cli import main

    path = lakehouse_tiny_project(tmp_path / "proj", lakehouse_project, tiny_model)
    base = ["predict", "--config", str(path), "--split", "test"]
    with one_torch_thread():
        alone = CliRunner().invoke(main, [*base, "--model", str(tiny_model), "--out", str(tmp_path / "alone.jsonl")])
        assert alone.exit_code == 0, alone.output
        both = CliRunner().invoke(main, [*base, "--model", str(tiny_model), "--model", str(tiny_model),
                                         "--out", str(tmp_path / "ens.jsonl")])
    assert both.exit_code == 0, both.output
    single = (tmp_path / "alone.jsonl").read_text()
    assert (tmp_path / "ens.m1.jsonl").read_text() == (tmp_path / "ens.m2.jsonl").read_text() == single
    records = [json.loads(line) for line in (tmp_path / "ens.jsonl").read_text().splitlines()]
    assert [r["sql"] for r in records] == [json.loads(line)["sql"] for line in single.splitlines()]
    members = [str(tmp_path / "ens.m1.jsonl"), str(tmp_path / "ens.m2.jsonl")]
    assert all([c["source"] for c in r["candidates"]] == members for r in records)
    stats = json.loads((tmp_path / "ens.stats.json").read_text())
    assert stats["questions"] == len(records) and stats["models"] == [str(tiny_model)] * 2 and stats["seconds"] > 0
    scored = CliRunner().invoke(main, ["eval", "--config", str(path), "--predictions", str(tmp_path / "ens.jsonl"),
                                       "--split", "test", "--release", "ens"])
    assert scored.exit_code == 0 and "candidate selection: 2 candidates" in scored.output, scored.output
    no_out = CliRunner().invoke(main, [*base, "--model", str(tiny_model), "--model", str(tiny_model)])
    assert no_out.exit_code == 2 and "needs --out" in no_out.output
