"""POST /v1/feedback on a real server (127.0.0.1): checked, appended whole to datasets/<name>/feedback.jsonl."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from tests.conftest import build_project
from tests.test_serve import TOKEN, ScriptedEngine, auth, config, serving

KEYS = ["id", "question", "sql", "model_sql", "verdict", "run", "created", "author", "db"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A private project (the server writes into its datasets/), token auth on, room for 128 requests at once."""
    root = tmp_path_factory.mktemp("feedback")
    path = build_project(root / "proj")
    cfg = config(path, "serve.token_env=T2S_FEEDBACK_TOKEN", "serve.max_concurrency=128", "serve.query_workers=2")
    with ScriptedEngine() as engine, pytest.MonkeyPatch.context() as mp:
        mp.setenv("T2S_FEEDBACK_TOKEN", TOKEN)
        with serving(cfg, upstream=engine.url) as url:
            with httpx.Client(base_url=url, headers=auth(), timeout=120) as client:
                yield client, root / "proj" / "datasets" / "demo" / "feedback.jsonl", engine.url


def records(path):
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_wrong_answer_with_a_correction_is_appended_in_the_review_format(server):
    client, path, engine_url = server
    before = len(records(path))
    reply = client.post("/v1/feedback", json={"question": "How many stores?", "model_sql": "SELECT 1",
                                              "verdict": "wrong", "sql": "SELECT count(*) FROM core.stores"})
    assert reply.status_code == 201
    right = client.post("/v1/feedback", json={"question": "Store names", "verdict": "right",
                                              "model_sql": "SELECT store_name FROM core.stores"})
    assert right.status_code == 201
    wrong, marked_right = records(path)[before:]
    assert list(wrong) == KEYS and wrong["id"] == reply.json()["id"] and len(wrong["id"]) == len("fb-") + 12
    assert (wrong["question"], wrong["sql"], wrong["model_sql"], wrong["verdict"]) == \
        ("How many stores?", "SELECT count(*) FROM core.stores", "SELECT 1", "wrong")
    assert wrong["run"] == engine_url and wrong["author"] == "feedback" and wrong["db"] is None
    assert wrong["created"].startswith("20") and wrong["created"].endswith("+00:00")
    assert marked_right["sql"] == marked_right["model_sql"] == "SELECT store_name FROM core.stores"
    assert not (path.parent / "pairs.jsonl").exists()


@pytest.mark.parametrize("body, said", [
    ({"verdict": "wrong", "sql": "DROP TABLE sales.orders"}, "refused"),
    ({"verdict": "wrong", "sql": "SELECT store_nme FROM core.stores"}, "store_nme"),
    ({"verdict": "wrong", "sql": "SELECT CAST(store_name AS INTEGER) FROM core.stores"}, "runtime_error"),
    ({"verdict": "wrong", "sql": "  "}, "needs the corrected SQL"),
    ({"verdict": "right", "model_sql": "SELECT * FROM read_csv('/etc/passwd')"}, "refused"),
    ({"verdict": "maybe", "sql": "SELECT 1"}, "verdict"),
])
def test_invalid_feedback_gets_422_and_nothing_is_written(server, body, said):
    client, path, _ = server
    before = path.read_bytes() if path.exists() else None
    reply = client.post("/v1/feedback", json={"question": "q", "model_sql": "SELECT 1", **body})
    assert reply.status_code == 422 and said in reply.json()["error"]["message"]
    assert (path.read_bytes() if path.exists() else None) == before


def test_feedback_needs_the_token(server):
    client, path, _ = server
    before = len(records(path))
    reply = httpx.post(f"{client.base_url}/v1/feedback", timeout=30,
                       json={"question": "q", "model_sql": "SELECT 1", "verdict": "right"})
    assert reply.status_code == 401 and len(records(path)) == before


def test_100_concurrent_posts_lose_nothing(server):
    client, path, _ = server
    before = records(path)

    def post(i: int) -> int:
        return client.post("/v1/feedback", json={"question": f"question {i} " + "ü" * (i % 7), "verdict": "wrong",
                                                 "model_sql": "SELECT 1", "sql": f"SELECT {i} AS n"}).status_code

    with ThreadPoolExecutor(32) as pool:
        statuses = list(pool.map(post, range(100)))
    assert statuses == [201] * 100
    added = records(path)[len(before):]  # every line parses: none torn or interleaved
    assert sorted(r["sql"] for r in added) == sorted(f"SELECT {i} AS n" for i in range(100))
    assert len({r["id"] for r in added}) == 100
