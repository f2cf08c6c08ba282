"""A newcomer's first hour (issue 19): no silent overwrites, progress on long steps, one-line errors, options that
apply are applied, a project is required, harmless third-party noise filtered at the CLI only."""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from click.testing import CliRunner
from tinymodel import make_project, one_torch_thread, pair_records

from tests.conftest import REPO
from tests.test_serve import ScriptedEngine, serving
from tests.test_spider_import import _make_benchmark
from text2sql.cli import main
from text2sql.config import load_config
from text2sql.data import load_pairs

BAD_BYTES = b'{"id": "x", "question": "caf\xe9 \xff"}\n'  # latin-1 text: the first bad byte is its 0xe9
BAD_OFFSET = BAD_BYTES.index(b"\xe9")


def invoke(*args: str, cwd: Path | None = None, env: dict | None = None):
    """The CLI in-process (in `cwd` if given); a crash (anything but a clean exit) fails the test with its traceback."""
    before = Path.cwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        result = CliRunner().invoke(main, list(args), env=env)
    finally:
        os.chdir(before)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def one_error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 1 and len(lines) == 1, result.output
    return lines[0]


@pytest.fixture
def project(tmp_path, lakehouse_project) -> Path:
    """A project reading the shared small lakehouse (read-only), with its own datasets, reports and runs."""
    lake = lakehouse_project
    (tmp_path / "text2sql.yaml").write_text(yaml.safe_dump({
        "catalog": {"name": "demo", "schemas_dir": str(lake / "schemas"), "catalogs": {"demo": {
            "type": "sql", "uri": f"sqlite:///{lake / '.lakehouse' / 'catalog.db'}",
            "warehouse": (lake / ".lakehouse" / "warehouse").as_uri()}}},
        "warehouse": {"cache_dir": str(lake / ".cache" / "warehouse"), "timeout_s": 2},
    }))
    pairs = tmp_path / "datasets" / "demo" / "pairs.jsonl"
    pairs.parent.mkdir(parents=True)
    pairs.write_text("".join(json.dumps(r) + "\n" for r in pair_records()))
    return tmp_path


# ---------------------------------------------------------------- 1. nothing overwritten without --force


def test_spider_import_refuses_to_replace_a_dataset(project, tmp_path_factory):
    bench = _make_benchmark(tmp_path_factory.mktemp("bench"))
    config = str(project / "text2sql.yaml")
    before = (project / "datasets" / "demo" / "pairs.jsonl").read_text()
    refused = invoke("data", "import", "spider", str(bench), "--name", "demo", "--config", config)
    assert one_error_line(refused) == (f"error: dataset 'demo' exists ({project}/datasets/demo/pairs.jsonl): "
                                       "--force replaces it, or choose another --name")
    assert (project / "datasets" / "demo" / "pairs.jsonl").read_text() == before
    replaced = invoke("data", "import", "spider", str(bench), "--name", "demo", "--config", config, "--force")
    assert replaced.exit_code == 0, replaced.output
    kept = load_pairs(load_config(config), "demo")
    assert f"kept {len(kept)} of " in replaced.output and {p.db for p in kept} == {"shop"}


def test_eval_release_refuses_to_replace_a_report(project):
    preds = project / "preds.jsonl"
    preds.write_text("".join(json.dumps({"id": r["id"], "sql": r["sql"]}) + "\n" for r in pair_records()))
    args = ["eval", "--predictions", str(preds), "--split", "test", "--config", str(project / "text2sql.yaml")]
    first = invoke(*args, "--release", "v1")
    assert first.exit_code == 0, first.output
    report = project / "eval" / "reports" / "v1" / "report.json"
    written = report.read_text()
    refused = invoke(*args, "--release", "v1", "--mode", "lenient")
    assert one_error_line(refused) == (f"error: release report {report.parent} exists: --force replaces it, "
                                       "or choose another --release")
    assert report.read_text() == written
    # With --model the check comes before generation: the model named here does not even exist.
    refused = invoke("eval", "--model", str(project / "no-such-model"), "--release", "v1", "--config",
                     str(project / "text2sql.yaml"))
    assert "release report" in one_error_line(refused)
    replaced = invoke(*args, "--release", "v1", "--mode", "lenient", "--force")
    assert replaced.exit_code == 0, replaced.output
    assert json.loads(report.read_text())["mode"] == "lenient"


@pytest.mark.slow
def test_train_and_merge_guard_their_dirs_and_evaluate_dev_once(tiny_project):
    """One run dir per name unless --force; the dev split is evaluated once at the end; merge takes --config/--set."""
    config = ["--config", str(tiny_project)]
    quick = ["--set", "train.run_name=r", "--set", "train.max_steps=2", "--set", "train.eval_steps=2",
             "--set", "train.save_steps=2", "--set", "train.select_by=last"]
    run = tiny_project.parent / "runs" / "r"

    def eval_steps_logged() -> list[int]:
        return [r["step"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "eval_loss" in r]

    with one_torch_thread():
        assert invoke("train", *config, *quick).exit_code == 0
        assert eval_steps_logged() == [2]  # eval_steps == max_steps: the Trainer's own evaluation, not a second one
        assert "eval_loss" in json.loads((run / "manifest.json").read_text())["metrics"]

        refused = invoke("train", *config, *quick)
        assert one_error_line(refused) == (f"error: run dir {run} exists: --resume continues it, --force replaces it, "
                                           "or set another train.run_name")
        assert invoke("train", *config, *quick, "--resume", "--force").exit_code == 2

        replaced = invoke("train", *config, *quick, "--set", "train.max_steps=3", "--force")
        assert replaced.exit_code == 0, replaced.output
        assert eval_steps_logged() == [2, 3]  # the last step is not an eval step: one evaluation after training

        # eval_steps 0 (the CPU demo's budget): no dev loss at all, not even the one after training.
        assert invoke("train", *config, *quick, "--set", "train.eval_steps=0", "--force").exit_code == 0
        assert eval_steps_logged() == []
        assert not [k for k in json.loads((run / "manifest.json").read_text())["metrics"] if k.startswith("eval_")]

        merged = invoke("merge", *config, "--set", "train.run_name=r")  # RUN from the config
        assert merged.exit_code == 0 and merged.output.strip().splitlines()[-1] == str(run / "merged")
        assert invoke("merge", str(run), "--set", "train.run_name=x").exit_code == 2  # --set could not apply
        refused = invoke("merge", str(run))
        assert one_error_line(refused) == f"error: merged dir {run / 'merged'} exists: --force replaces it, or give another --out"
        from text2sql.merge import merge_run  # the CPU demo's shorter parity check: the first N held prompts

        parity = json.loads((merge_run(run, run / "merged-1", "float32", parity_prompts=1) / "parity.json").read_text())
        assert (parity["prompts"], parity["dtype"], len(parity["items"])) == (1, "float32", 1)
        assert invoke("merge", str(run), "--force").exit_code == 0


# ---------------------------------------------------------------- 3. one-line errors


@pytest.mark.parametrize("command", ["config validate", "data validate", "data stats", "data add --from", "eval"])
def test_a_file_that_is_not_utf8_is_one_line(project, command):
    config = str(project / "text2sql.yaml")
    bad = project / "bad.jsonl"
    bad.write_bytes(BAD_BYTES)
    if command == "config validate":
        (project / "bad.yaml").write_bytes(b"data:\n  dataset: caf\xe9\n")
        bad, args = project / "bad.yaml", ["config", "validate", str(project / "bad.yaml")]
        offset = 20
    elif command in ("data validate", "data stats"):
        bad = project / "datasets" / "demo" / "pairs.jsonl"
        bad.write_bytes(bad.read_bytes() + BAD_BYTES)
        args, offset = [*command.split(), "--config", config], len(bad.read_bytes()) - len(BAD_BYTES) + BAD_OFFSET
    elif command == "data add --from":
        args, offset = ["data", "add", "--from", str(bad), "--config", config], BAD_OFFSET
    else:
        args, offset = ["eval", "--predictions", str(bad), "--config", config], BAD_OFFSET
    assert one_error_line(invoke(*args)) == f"error: {bad}: not UTF-8 (byte 0xe9 at offset {offset})"


def test_query_runtime_errors_and_timeouts_are_one_line_on_stderr(lakehouse_project):
    def run(*args):
        return subprocess.run([sys.executable, str(REPO / "cli.py"), "query", *args], cwd=lakehouse_project,
                              capture_output=True, text=True, timeout=120)

    broken = run("SELECT CAST(store_name AS INTEGER) FROM core.stores")
    assert broken.returncode == 1 and broken.stdout == ""
    assert broken.stderr.startswith("error: runtime_error: ConversionException") and len(broken.stderr.splitlines()) == 1
    slow = run("--set", "warehouse.timeout_s=0.5",
               "SELECT count(*) FROM sales.order_lines a, sales.order_lines b, sales.order_lines c")
    assert slow.returncode == 1 and slow.stdout == ""
    assert slow.stderr == ("error: timeout: stopped after 0.5 s, the limit warehouse.timeout_s sets "
                           "(raise it with --set warehouse.timeout_s=SECONDS)\n")


def test_serve_checks_host_and_port_before_loading_the_model(lakehouse_project):
    """The model dir does not exist: any error about it would mean the model was loaded first."""
    config = ["--config", str(lakehouse_project / "text2sql.yaml"), "--model", "/no/such/model"]
    assert one_error_line(invoke("serve", *config, "--port", "99999")) == \
        "error: port 99999: a TCP port is 1-65535 (--port or serve.port)"
    unresolvable = invoke("serve", *config, "--host", "no-such-host.invalid", env={"TEXT2SQL_TOKEN": "t"})
    assert "error: host 'no-such-host.invalid': cannot resolve it" in one_error_line(unresolvable)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert one_error_line(invoke("serve", *config, "--port", str(port))) == (
            f"error: cannot listen on 127.0.0.1:{port}: Address already in use (another server there? "
            "choose another --port)")


# ---------------------------------------------------------------- 4. the server reads JSON whatever the content type


def test_sql_endpoint_reads_json_sent_as_a_form(lakehouse_project):
    cfg = load_config(lakehouse_project / "text2sql.yaml", ["serve.token_env=''"])
    form = {"Content-Type": "application/x-www-form-urlencoded"}  # what `curl -d` sends
    with ScriptedEngine() as engine, serving(cfg, upstream=engine.url) as url:
        engine.script("SELECT count(*) AS n FROM core.stores")
        ok = httpx.post(f"{url}/v1/sql", content=json.dumps({"question": "How many stores?", "execute": True}),
                        headers=form, timeout=30)
        assert ok.status_code == 200 and ok.json()["rows"] == [[19]]
        bad = httpx.post(f"{url}/v1/sql", content=b"question=x", headers=form, timeout=30)
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"
        typo = httpx.post(f"{url}/v1/sql", json={"question": "q", "exectue": True}, timeout=30)
        assert typo.status_code == 422 and "exectue" in typo.json()["error"]["message"]


# ---------------------------------------------------------------- 5. options apply, a project is required


def test_data_add_from_file_takes_the_options_as_defaults(project):
    new = project / "new.jsonl"
    # SQL templates no pair of the project has (data add keeps a template in one split)
    new.write_text(json.dumps({"question": "How many marketing promotions have a budget?",
                               "sql": "SELECT count(*) FROM marketing.promotions WHERE budget IS NOT NULL"}) + "\n" +
                   json.dumps({"question": "How many online stores have a city?", "split": "train", "tags": ["mine"],
                               "sql": "SELECT count(*) FROM core.stores WHERE channel = 'online' AND city IS NOT NULL"})
                   + "\n")
    added = invoke("data", "add", "--from", str(new), "--split", "test", "--tags", "promo,bulk", "--difficulty",
                   "hard", "--notes", "from a file", "--config", str(project / "text2sql.yaml"))
    assert added.exit_code == 0, added.output
    pairs = {p.question: p for p in load_pairs(load_config(project / "text2sql.yaml"))}
    first, second = pairs["How many marketing promotions have a budget?"], pairs["How many online stores have a city?"]
    assert (first.split, first.tags, first.difficulty, first.notes) == ("test", ["bulk", "promo"], "hard", "from a file")
    assert (second.split, second.tags, second.difficulty, second.notes) == ("train", ["mine"], "hard", "from a file")


def test_outside_a_project_commands_say_so_and_init_writes_one(tmp_path):
    for args in (["schema", "pull"], ["data", "stats"], ["config", "show"], ["merge"]):
        assert one_error_line(invoke(*args, cwd=tmp_path)) == "error: no text2sql.yaml here or above; run text2sql init"
    made = invoke("init", cwd=tmp_path)
    assert made.exit_code == 0 and (tmp_path / "text2sql.yaml").read_text().startswith("# text2sql project config")
    assert invoke("config", "validate", cwd=tmp_path).exit_code == 0
    assert load_config(tmp_path / "text2sql.yaml").catalog.name == "demo"
    (tmp_path / "text2sql.yaml").write_text("data:\n  dataset: mine\n")
    assert one_error_line(invoke("init", cwd=tmp_path)) == f"error: {tmp_path / 'text2sql.yaml'} exists: --force replaces it"
    assert (tmp_path / "text2sql.yaml").read_text() == "data:\n  dataset: mine\n"
    (tmp_path / "sub").mkdir()
    assert "dataset: mine" in invoke("config", "show", cwd=tmp_path / "sub").output  # found above


# ---------------------------------------------------------------- 6. harmless third-party noise, at the CLI only


def test_harmless_warnings_are_filtered_by_the_cli_not_by_importing_it():
    code = ("import logging, warnings, text2sql.cli, text2sql.quiet as quiet; n = len(warnings.filters); "
            "assert not logging.getLogger('bitsandbytes.backends.cpu.ops').filters; quiet.quiet_third_party(); "
            "print(len(warnings.filters) > n, len(logging.getLogger('bitsandbytes.backends.cpu.ops').filters))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "1"]


def test_the_bitsandbytes_kernels_hint_is_dropped_and_other_records_kept(caplog):
    from text2sql.quiet import quiet_third_party

    quiet_third_party()
    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING):
        logger.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you "
                       "already `pip install kernels` and the kernels >= 0.11.1", "no module")
        logger.warning("something else")
    assert [r.getMessage() for r in caplog.records] == ["something else"]


# ---------------------------------------------------------------- 2. progress


def test_progress_bar_shows_rate_and_eta_on_a_terminal_only():
    from rich.console import Console

    from text2sql.progress import progress_bar

    out = io.StringIO()
    with progress_bar("predict", 4, "q", console=Console(file=out, force_terminal=True, width=120)) as advance:
        for _ in range(4):
            advance(1)
    assert "predict" in out.getvalue() and "q/s" in out.getvalue() and "eta" in out.getvalue()
    quiet = io.StringIO()
    with progress_bar("predict", 4, "q", console=Console(file=quiet, force_terminal=False)) as advance:
        advance(4)
    assert quiet.getvalue() == ""


@pytest.mark.slow
def test_demo_shows_stages_with_time_and_a_summary(tmp_path, lakehouse_project, tiny_model, monkeypatch):
    """`text2sql demo` end to end on the tiny model (CPU budget): stage lines, elapsed times, EX, report, budget;
    on the CPU no dev loss, a float32 merge with a shorter parity check, and a subset of the test split, stated."""
    from text2sql.data import load_pairs
    from text2sql.pipeline import CPU_BUDGET, CPU_DEMO_EXPECTED, CPU_EVAL, CPU_MERGE, run_pipeline
    from text2sql.progress import format_seconds

    path = make_project(tmp_path / "proj", lakehouse_project, tiny_model)
    cfg = load_config(path, ["lakehouse.scale=0.05", "generate.max_new_tokens=8"])
    monkeypatch.setitem(CPU_EVAL, "max_questions", 2)  # the tiny project has 3 test pairs, the demo 132
    lines: list[str] = []
    with one_torch_thread():
        result = run_pipeline(cfg, release="demo-test", echo=lines.append)
    text = "\n".join(lines)
    for n, name in enumerate(["lakehouse", "schema", "validate", "model", "train", "merge", "eval"], 1):
        assert f"{n}/7 {name}: " in text
        if name != "lakehouse" or "building" in text:
            assert any(line.startswith(f"    {name}: ") and line.endswith(" s") for line in lines), name
    m = result["metrics"]
    assert f"  EX {m['ex']:.1%} ({m['correct']}/{m['n']}) on demo/test, mode strict" in text
    assert "  report: eval/reports/demo-test/report.md" in text and (tmp_path / "proj/eval/reports/demo-test/report.md").is_file()
    assert f"trains only {CPU_BUDGET['max_steps']} LoRA steps" in text
    assert f"expected on a 2-core CPU: about {format_seconds(CPU_DEMO_EXPECTED['time_s'])}" in text
    run = tmp_path / "proj" / "runs" / "demo-test"
    log = (run / "log.jsonl").read_text().splitlines()
    assert log and sum("eval_loss" in json.loads(line) for line in log) == 0  # no dev loss on a CPU
    assert not [k for k in json.loads((run / "manifest.json").read_text())["metrics"] if k.startswith("eval_")]
    parity = json.loads((run / "merged" / "parity.json").read_text())
    held = len(json.loads((run / "held_prompts.json").read_text()))
    assert (parity["prompts"], parity["dtype"]) == (min(held, CPU_MERGE["parity_prompts"]), CPU_MERGE["dtype"])
    total, n = len(load_pairs(cfg, "demo", "test")), CPU_EVAL["max_questions"]
    assert total > n and m["n"] + m["gold_errors"] == n
    assert result["subset"]["questions"] == n and result["subset"]["of"] == total
    assert f"7/7 eval: predict and score A SUBSET: {n} of the {total} demo/test questions" in text
    assert f"  SUBSET: {n} of the {total} demo/test questions" in text  # in the closing summary
    assert f"SUBSET: {n} of the {total} demo/test questions" in (tmp_path / "proj/eval/reports/demo-test/report.md").read_text()
    assert len((run / "merged" / "predictions" / "demo-test.jsonl").read_text().splitlines()) == n
    with pytest.raises(Exception, match="release report .* exists: --force replaces it"):
        run_pipeline(cfg, release="demo-test", echo=lines.append)  # refused before any work


def test_readme_and_demo_state_the_same_expected_figures():
    from text2sql.pipeline import CPU_DEMO_EXPECTED
    from text2sql.progress import format_seconds

    readme = (REPO / "README.md").read_text()
    assert f"measured: {format_seconds(CPU_DEMO_EXPECTED['time_s'])}" in readme
    ex = CPU_DEMO_EXPECTED["ex"]
    assert (f"expected EX {ex:.1%}" if ex is not None else "expected EX not measured yet") in readme
