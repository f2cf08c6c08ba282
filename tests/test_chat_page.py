"""The chat page at /, driven by a real headless Chromium (Debian's `chromium`, through Playwright) against a real
server on 127.0.0.1 running the tiny test model, taught two answers so that what the page shows is known:
a query with rows (a table and a chart), and a DROP that the server refuses."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import httpx
import pytest
from tests.conftest import build_project
from tests.test_serve import TOKEN, config, serving

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"]
ROWS_QUESTION = "List the stores with their ids"
ROWS_SQL = "SELECT store_name, store_id FROM core.stores ORDER BY store_id"
REFUSED_QUESTION = "Remove every order"
REFUSED_SQL = "DROP TABLE sales.orders"
CORRECTED_SQL = "SELECT store_name, store_id FROM core.stores ORDER BY store_name"

# CI installs chromium (.ci/run): there a missing browser is a failure, not a skip.
pytestmark = pytest.mark.skipif(not os.environ.get("CI") and not Path(CHROMIUM).exists(),
                                reason="needs Debian's chromium (apt-get install chromium); CI installs it")


def memorize(model_dir: Path, cfg, answers: dict[str, str], max_steps: int = 400) -> None:
    """Train the tiny model in `model_dir` until its greedy reply to each question, prompted as the server
    prompts it, is the given SQL (a few hundred CPU steps for a 2-layer, 64-wide model)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from text2sql.prompt import render_prompt

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    rows = []
    for question, sql in answers.items():
        prompt = tok(render_prompt(tok, server_prompt(cfg, model_dir, tok, question)), add_special_tokens=False)["input_ids"]
        answer = tok(sql + "<|im_end|>", add_special_tokens=False)["input_ids"]
        rows.append((torch.tensor([prompt + answer]), torch.tensor([[-100] * len(prompt) + answer])))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for step in range(max_steps):
        losses = [model(input_ids=ids, labels=labels).loss for ids, labels in rows]
        loss = sum(losses) / len(losses)
        if max(float(x.detach()) for x in losses) < 0.005:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.save_pretrained(model_dir)


def server_prompt(cfg, model_dir: Path, tokenizer, question: str) -> list[dict[str, str]]:
    """The messages the server builds for a question (serve's PromptBuilder, the model's prompt settings)."""
    from text2sql.prompt import PromptBuilder, model_prompt_settings

    settings = model_prompt_settings(model_dir, cfg.prompt)
    return PromptBuilder.for_model(cfg, settings, tokenizer, who="serve").messages(question)


@pytest.fixture(scope="module")
def chat_server(tmp_path_factory, tiny_model):
    """A private project and a server (token on, no retries: a refusal stays one) with the taught tiny model."""
    from text2sql.generate import generate, load_generator

    root = tmp_path_factory.mktemp("chat")
    path = build_project(root / "proj")
    cfg = config(path, "serve.token_env=T2S_PAGE_TOKEN", "serve.retries=0", "generate.max_new_tokens=40",
                 "prompt.max_schema_tokens=300")  # a short prompt: the tiny model learns its answers in seconds
    model_dir = root / "model"
    shutil.copytree(tiny_model, model_dir)
    answers = {ROWS_QUESTION: ROWS_SQL, REFUSED_QUESTION: REFUSED_SQL}
    memorize(model_dir, cfg, answers)
    gen = load_generator(model_dir, cfg)
    chats = [server_prompt(cfg, model_dir, gen.tokenizer, q) for q in answers]
    assert generate(gen, chats) == list(answers.values()), "the tiny model did not learn its two answers"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("T2S_PAGE_TOKEN", TOKEN)
        with serving(cfg, model_dir) as url:
            yield url, root / "proj" / "datasets" / "demo" / "feedback.jsonl"


@pytest.fixture
def page(tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = context.new_page()
            page.set_default_timeout(90_000)
            yield page
        finally:
            context.close()


def ask(page, question: str):
    """Type a question, send it, wait for its answer; returns the turn element."""
    count = page.locator(".turn").count()
    page.fill("#question", question)
    page.click("#send")
    turn = page.locator(".turn").nth(count)
    turn.locator(".status").filter(has_not_text="Thinking").wait_for()
    return turn


@pytest.mark.slow
def test_page_asks_shows_sql_rows_chart_refusal_and_sends_a_correction(chat_server, page):
    url, feedback = chat_server
    expected = httpx.post(f"{url}/v1/sql", json={"question": ROWS_QUESTION, "execute": True},
                          headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120).json()
    assert expected["sql"] == ROWS_SQL and len(expected["rows"]) >= 2

    page.goto(f"{url}/")
    assert page.title() == "text2sql"
    no_token = ask(page, ROWS_QUESTION)
    assert "needs a valid token" in no_token.locator(".status").inner_text()

    page.fill("#token", TOKEN)
    turn = ask(page, ROWS_QUESTION)
    assert turn.get_attribute("data-outcome") == "ok"
    assert turn.locator(".sql").inner_text() == ROWS_SQL
    assert turn.locator("table.rows thead th").all_inner_texts() == ["store_name", "store_id"]
    cells = [[c for c in row.locator("td").all_inner_texts()] for row in turn.locator("table.rows tbody tr").all()]
    assert cells == [[str(v) for v in row] for row in expected["rows"]]
    assert turn.locator("svg.chart rect").count() == len(expected["rows"])  # one label column + numbers: bars

    refused = ask(page, REFUSED_QUESTION)
    assert refused.get_attribute("data-outcome") == "refused"
    assert "refused" in refused.locator(".status").inner_text()
    assert "DROP" in refused.locator(".message").inner_text()
    assert refused.locator("table.rows").count() == 0
    assert page.locator(".turn").count() == 3, "the conversation stays on the page"

    turn.locator(".mark-wrong").click()
    assert turn.locator(".correction").input_value() == ROWS_SQL  # the model's SQL to edit
    turn.locator(".correction").fill("DELETE FROM core.stores")
    turn.locator(".send-correction").click()
    turn.locator(".feedback-status.error").wait_for()
    assert "not usable" in turn.locator(".feedback-status").inner_text() and not feedback.exists()

    turn.locator(".correction").fill(CORRECTED_SQL)
    turn.locator(".send-correction").click()
    turn.locator(".feedback-status.ok").wait_for()
    (record,) = [json.loads(line) for line in feedback.read_text().splitlines()]
    assert (record["question"], record["sql"], record["model_sql"], record["verdict"]) == \
        (ROWS_QUESTION, CORRECTED_SQL, ROWS_SQL, "wrong")
