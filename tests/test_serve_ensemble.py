"""Ensemble serving: several models answer each question, the answer most of them agree on by execution wins.

Members are real OpenAI-compatible engines (`ScriptedEngine`, through `--upstream` repeated) where a test needs
given SQL, and the tiny real model where it needs local members; the server is started for real on 127.0.0.1.
"""

from __future__ import annotations

import json
import shutil
import socket
from contextlib import ExitStack

import httpx
import pytest
from tests.conftest import build_project
from tinymodel import pair_records

from tests.test_serve import ScriptedEngine, captured_logs, config, requests_logged, serving, wait_until

from text2sql.prompt import RETRY_PROMPT
from text2sql.warehouse import QueryRunner

STORES = ["SELECT count(*) AS n FROM core.stores", "SELECT count(store_id) AS stores FROM core.stores"]
PRODUCTS = "SELECT count(*) AS n FROM core.products"


@pytest.fixture(scope="module")
def engines():
    with ExitStack() as stack:
        yield [stack.enter_context(ScriptedEngine()) for _ in range(3)]


@pytest.fixture(scope="module")
def ensemble(lakehouse_project, engines):
    """A server whose three members are the three scripted engines, in order."""
    with serving(config(lakehouse_project / "text2sql.yaml"), upstream=[e.url for e in engines]) as url:
        with httpx.Client(base_url=url, timeout=60) as client:
            yield client


def ask(client, question="How many stores?"):
    """/v1/sql with execution, on a client or a base URL."""
    if isinstance(client, str):
        with httpx.Client(base_url=client, timeout=60) as fresh:
            return ask(fresh, question)
    reply = client.post("/v1/sql", json={"question": question, "execute": True})
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_the_result_most_members_share_wins_and_each_member_is_asked_once(ensemble, engines):
    """Member 0 queries the wrong table; members 1 and 2 write different SQL with the same result: member 1 wins."""
    for engine, reply in zip(engines, [PRODUCTS, *STORES]):
        engine.script(reply)
    with captured_logs() as logs:
        body = ask(ensemble)
        wait_until(lambda: requests_logged(logs, "/v1/sql"))  # the line is written after the response
    assert body["sql"] == STORES[0] and body["valid"] is True and body["retried"] is False
    assert body["rows"][0][0] > 0 and body["ensemble"] == {"member": 1, "votes": 2, "members": 3}
    assert [len(e.requests) for e in engines] == [1, 1, 1]
    prompts = [e.requests[0]["body"]["messages"] for e in engines]
    assert prompts[0] == prompts[1] == prompts[2] and prompts[0][-1]["content"] == "How many stores?"
    logged = requests_logged(logs, "/v1/sql")[0]
    assert logged["member"] == 1 and logged["votes"] == 2


def test_a_tie_goes_to_the_first_member(ensemble, engines):
    for engine, reply in zip(engines, [PRODUCTS, STORES[0], "SELECT count(*) FROM sales.orders"]):
        engine.script(reply)
    body = ask(ensemble)
    assert body["sql"] == PRODUCTS and body["valid"] is True
    assert body["ensemble"] == {"member": 0, "votes": 1, "members": 3}


def test_with_no_valid_answer_the_first_member_retries_with_the_error(ensemble, engines):
    engines[0].script("SELECT nme FROM core.stores", STORES[0])
    engines[1].script("SELECT bogus FROM core.stores")
    engines[2].script("DROP TABLE core.stores")
    body = ask(ensemble)
    assert body["sql"] == STORES[0] and body["valid"] is True and body["retried"] is True
    assert body["ensemble"] == {"member": 0, "votes": 0, "members": 3}
    assert [len(e.requests) for e in engines] == [2, 1, 1]
    retry = engines[0].requests[1]["body"]["messages"]
    assert retry[:-2] == engines[0].requests[0]["body"]["messages"]
    assert retry[-2] == {"role": "assistant", "content": "SELECT nme FROM core.stores"}
    assert retry[-1]["content"].startswith(RETRY_PROMPT.split("{")[0]) and "nme" in retry[-1]["content"]


def test_a_member_that_fails_is_left_out_and_the_retry_goes_to_the_member_chosen(lakehouse_project, engines):
    """Member 0's engine is down: members 1 and 2 vote; neither is valid, so member 1 (the first that answered)
    is corrected."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{s.getsockname()[1]}"  # closed at once: nothing listens there
    engines[1].script("SELECT nme FROM core.stores", STORES[1])
    engines[2].script("SELECT bogus FROM core.stores")
    cfg = config(lakehouse_project / "text2sql.yaml")
    with captured_logs() as logs, serving(cfg, upstream=[down, engines[1].url, engines[2].url]) as url:
        body = ask(url)
    assert body["sql"] == STORES[1] and body["retried"] is True
    assert body["ensemble"] == {"member": 1, "votes": 0, "members": 3}
    assert [len(e.requests) for e in engines[1:]] == [2, 1]
    assert [e["member"] for e in logs if e["event"] == "ensemble member failed"] == [0]


def test_stream_sends_the_chosen_reply_then_the_checked_sql(ensemble, engines):
    for engine, reply in zip(engines, [PRODUCTS, *STORES]):
        engine.script(reply)
    chunks = []
    with ensemble.stream("POST", "/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "How many stores?"}], "stream": True}) as response:
        assert response.status_code == 200
        chunks = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == STORES[0]
    final = chunks[-1]["text2sql"]
    assert final["sql"] == STORES[0] and final["ensemble"] == {"member": 1, "votes": 2, "members": 3}


def test_models_list_the_members_and_feedback_names_them_all(tmp_path, tiny_model):
    """Members with their own prompt settings (k-shot 2 and 0, one model dir per upstream): each engine gets the
    prompt its model was trained with; /v1/models, the startup log and feedback's `answered_by` name all members."""
    from text2sql.config import PromptConfig
    from text2sql.prompt import save_prompt_settings

    models = [tmp_path / "kshot2", tmp_path / "kshot0"]
    for model, k in zip(models, (2, 0)):
        shutil.copytree(tiny_model, model)
        save_prompt_settings(model, PromptConfig(k_shot=k), "demo")
    path = build_project(tmp_path / "proj")
    (tmp_path / "proj" / "datasets" / "demo").mkdir(parents=True)
    (tmp_path / "proj" / "datasets" / "demo" / "pairs.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in pair_records()))
    cfg = config(path, "serve.retries=0")
    with ExitStack() as stack:
        engines = [stack.enter_context(ScriptedEngine()).script(STORES[0]) for _ in models]
        logs = stack.enter_context(captured_logs())
        url = stack.enter_context(serving(cfg, models, upstream=[e.url for e in engines]))
        body = ask(url)
        listed = httpx.get(f"{url}/v1/models").json()["data"]
        posted = httpx.post(f"{url}/v1/feedback", json={"question": "How many stores?", "model_sql": body["sql"],
                                                         "verdict": "right"})
    assert body["ensemble"] == {"member": 0, "votes": 2, "members": 2}
    users = [sum(m["role"] == "user" for m in e.requests[0]["body"]["messages"]) for e in engines]
    assert users == [3, 1], "two k-shot examples and the question; the question alone"
    names = [str(m) for m in models]
    assert listed[0]["id"] == "text2sql" and listed[0]["members"] == names
    assert next(e for e in logs if e["event"] == "startup")["members"] == names
    assert posted.status_code == 201
    record = json.loads((tmp_path / "proj" / "datasets" / "demo" / "feedback.jsonl").read_text())
    assert record["run"] == "+".join(names)


def test_two_local_members_answer_and_shut_down(lakehouse_project, tiny_model):
    cfg = config(lakehouse_project / "text2sql.yaml", "generate.max_new_tokens=8", "serve.retries=0")
    with captured_logs() as logs, serving(cfg, [tiny_model, tiny_model]) as url:
        reply = httpx.post(f"{url}/v1/sql", json={"question": "How many stores?", "execute": True}, timeout=120)
        listed = httpx.get(f"{url}/v1/models").json()["data"]
    assert reply.status_code == 200, reply.text
    assert reply.json()["ensemble"]["members"] == 2 and reply.json()["ensemble"]["member"] in (0, 1)
    assert listed[0]["members"] == [str(tiny_model)] * 2
    assert [e["event"] for e in logs if e["event"] in ("startup", "shutdown")] == ["startup", "shutdown"]


def test_one_model_replies_carry_no_ensemble_field(lakehouse_project, engines):
    engines[0].script(STORES[0])
    with serving(config(lakehouse_project / "text2sql.yaml"), upstream=[engines[0].url]) as url:
        body = ask(url)
        listed = httpx.get(f"{url}/v1/models").json()["data"]
    assert "ensemble" not in body and set(body) == {"sql", "tables", "valid", "retried", "columns", "rows",
                                                    "truncated", "latency_ms"}
    assert "members" not in listed[0]


@pytest.mark.parametrize("args, said", [
    (["--model", "a", "--model", "b", "--set", "generate.num_candidates=3"],
     "generate.num_candidates=3 with an ensemble of 2 models"),
    (["--upstream", "http://x", "--upstream", "http://y", "--model", "a", "--model", "b", "--model", "c"],
     "2 --upstream and 3 --model"),
    (["--upstream", "http://x", "--model", "a", "--model", "b"], "1 --upstream and 2 --model"),
])
def test_bad_ensembles_are_refused_in_one_line(lakehouse_project, args, said):
    from click.testing import CliRunner

    from text2sql.cli import main

    result = CliRunner().invoke(main, ["serve", "--config", str(lakehouse_project / "text2sql.yaml"), *args])
    assert result.exit_code == 1 and said in result.output, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


@pytest.mark.slow
def test_load_bench_serves_an_ensemble(tmp_path, lakehouse_project, tiny_model):
    """bench/serve_load.py --model A --model B starts `serve` with both and records them."""
    import subprocess
    import sys

    from tests.test_serve import REPO

    out = tmp_path / "load.json"
    done = subprocess.run([sys.executable, str(REPO / "bench" / "serve_load.py"), "--requests", "8",
                           "--concurrency", "4", "--model", str(tiny_model), "--model", str(tiny_model),
                           "--set", "generate.max_new_tokens=8", "--out", str(out),
                           "--config", str(lakehouse_project / "text2sql.yaml")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["statuses"] == {"200": 8} and report["models"] == [str(tiny_model)] * 2
    assert report["server"] == f"local {tiny_model}+{tiny_model}"


# ---------------------------------------------------------------- the chosen SQL runs once a request


ROWS = "SELECT store_id FROM core.stores ORDER BY store_id"
"""More rows than the counted runner's cap (warehouse.max_rows=5)."""


class CountingRunner(QueryRunner):
    """The real sandboxed runner, recording the SQL of every query its workers run: `run` (and so `run_many`)
    and the SQL a `judge_and_run` ran (none when the reply was refused)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.ran: list[str] = []

    def run(self, sql, max_rows=None, checked=False):
        self.ran.append(sql)
        return super().run(sql, max_rows, checked)

    def judge_and_run(self, reply, max_rows=None):
        sql, check, result = super().judge_and_run(reply, max_rows)
        if result is not None:
            self.ran.append(sql)
        return sql, check, result


@pytest.fixture(scope="module")
def counted(lakehouse_project, engines):
    """`pipeline(mode)`: a serve pipeline over the scripted engines (an ensemble of the three, engine 0 with 3
    candidates, or engine 0 alone), built as `create_app` builds it, with one CountingRunner (rows capped at 5)."""
    from text2sql.catalog import load_snapshot
    from text2sql.generate import Sampling
    from text2sql.serve.app import _upstream_members
    from text2sql.serve.pipeline import _Pipeline

    cfg = config(lakehouse_project / "text2sql.yaml", "warehouse.max_rows=5", "serve.retries=0")
    snapshot = load_snapshot(cfg)
    with CountingRunner.from_config(cfg, workers=2, snapshot=snapshot) as runner:
        def pipeline(mode):
            urls = [e.url for e in engines] if mode == "ensemble" else [engines[0].url]
            built = _Pipeline(snapshot, _upstream_members(cfg, urls, [], False), runner, 0, 2)
            if mode == "candidates":
                built.num_candidates, built.sampling = 3, Sampling(0.9, 1.0, 5)
            return built

        yield pipeline, runner


def answer(pipeline, max_rows=0):
    """`pipeline.answer` with execution, its backends started and closed around it."""
    import asyncio

    async def go():
        for m in pipeline.members:
            await m.backend.start()
        try:
            return await pipeline.answer("How many stores?", 64, execute=True, max_rows=max_rows)
        finally:
            for m in pipeline.members:
                await m.backend.close()

    return asyncio.run(go())


def script(engines, mode, replies):
    """Each member one reply (ensemble), or engine 0 the greedy reply then the samples (candidates, greedy)."""
    if mode == "ensemble":
        for engine, reply in zip(engines, replies):
            engine.script(reply)
    else:
        engines[0].script(*replies)


@pytest.mark.parametrize("mode", ["ensemble", "candidates", "greedy"])
def test_the_chosen_sql_runs_once_and_its_rows_are_the_answer(counted, engines, mode):
    """Selection runs each distinct candidate once; the chosen one's result is the answer's, not run again."""
    pipeline, runner = counted
    script(engines, mode, [PRODUCTS, *STORES] if mode != "greedy" else [STORES[0]])
    runner.ran.clear()
    got = answer(pipeline(mode))
    assert got.valid is True and got.retried is False and got.sql in STORES
    assert runner.ran.count(got.sql) == 1
    assert sorted(runner.ran) == sorted([PRODUCTS, *STORES] if mode != "greedy" else [STORES[0]])
    direct = runner.run(got.sql)
    assert got.result.columns == direct.columns and got.result.rows == direct.rows and direct.rows[0][0] > 0
    assert got.result.truncated is False and got.to_json()["rows"] == [list(r) for r in direct.rows]


@pytest.mark.parametrize("mode", ["ensemble", "candidates"])
def test_the_reused_result_is_cut_to_max_rows_as_a_run_would_be(counted, engines, mode):
    """max_rows below the runner's cap cuts the reused rows and flags them; at the cap (max_rows 0) they are the
    run's; above it (only a direct caller can ask: serve caps max_rows) selection's cut-short rows are too few,
    so the SQL runs again."""
    pipeline, runner = counted
    for max_rows, runs in ((2, 1), (0, 1), (5, 1), (7, 2)):
        script(engines, mode, [ROWS] * 3)
        runner.ran.clear()
        got = answer(pipeline(mode), max_rows)
        assert got.sql == ROWS and runner.ran == [ROWS] * runs, max_rows
        direct = runner.run(ROWS, max_rows or None)
        assert (got.result.rows, got.result.truncated) == (direct.rows, direct.truncated), max_rows
        assert len(direct.rows) == min(max_rows or 5, 5 if runs == 1 else 7) and direct.truncated is True


@pytest.mark.parametrize("mode", ["ensemble", "candidates"])
def test_a_destructive_reply_is_still_refused_and_runs_nothing(counted, engines, mode):
    pipeline, runner = counted
    destructive = f"DROP TABLE core.stores; {STORES[0]}"
    script(engines, mode, [destructive] * 3)
    runner.ran.clear()
    got = answer(pipeline(mode))
    assert (got.valid, got.error_kind, got.result) == (False, "refused", None) and runner.ran == []
    # Even with selection's valid result for the query inside it, the reply judged whole is refused, not run.
    from text2sql.select import StoredCandidate, select_candidate

    built = pipeline(mode)
    ran = select_candidate([StoredCandidate(STORES[0])], runner, built.snapshot).result
    assert ran is not None and not ran.error_kind
    runner.ran.clear()
    sql, check, result = built._judge_and_reuse(destructive, 0, STORES[0], ran)
    assert (check.ok, check.kind, result) == (False, "refused", None) and runner.ran == []
    assert runner.run("SELECT count(*) FROM core.stores").rows[0][0] > 0  # the table is still there
