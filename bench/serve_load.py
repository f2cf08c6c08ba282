"""Load test of `text2sql serve`: N requests at C-way concurrency; status counts and latency percentiles.

    python bench/serve_load.py [--requests 1000] [--concurrency 16] [--model DIR ... | --upstream URL | --url URL]
                               [--execute] [--chat] [--stream] [--smoke] [--decoding eager,static --out-dir DIR]

Starts `text2sql serve` in a subprocess on a free 127.0.0.1 port (bearer token on) with the tiny test model
(tests/tinymodel.py) by default, or `--model DIR` (repeated: an ensemble, each passed to `serve --model`), or
`--upstream URL`; `--url` drives a server that is already running instead (`--token` or $TEXT2SQL_TOKEN). Questions cycle through the dataset's questions.
Prints p50/p95/p99 latency and writes bench/results/serve_load.json (`--smoke`: 64 requests, no file).
Exit code 1 when any request got a 5xx or no answer at all.

--decoding eager,static starts one server per decoding path (`generate.decoding`) in turn and drives each with
the same load; with --out-dir, each report goes to DIR/serve_load-<decoding>.json and the ratios (the last path
against the first) to DIR/serve_load-compare.json. --stream asks /v1/chat/completions with `stream: true` and
also reports the time to the first content chunk. The started server warms up (static decoding: compiles) before
it answers /healthz, so no timed request pays for that. Progress goes to stderr (the server's start-up time, every
tenth of the requests, at least every 10 s); with --out-dir the started server's log is kept there as
serve-<decoding>.log, also when the run is stopped by SIGTERM (a `timeout` limit).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULT = REPO / "bench" / "results" / "serve_load.json"
TINY_MAX_NEW_TOKENS = 24
PROGRESS_S = 10.0
"""A progress line at least this often (besides every tenth of the requests)."""
FALLBACK_QUESTIONS = ["How many customers do we have?", "Total revenue by store region",
                      "How many orders were cancelled?", "Which product category has the most returns?",
                      "Average order value by payment method"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="Project config (default: the repo's text2sql.yaml).")
    parser.add_argument("--model", action="append", default=None,
                        help="Model dir to serve (default: the tiny test model); repeated: an ensemble.")
    parser.add_argument("--upstream", default=None, help="Serve with this OpenAI-compatible engine instead.")
    parser.add_argument("--url", default=None, help="Drive this running server; start none.")
    parser.add_argument("--token", default=os.environ.get("TEXT2SQL_TOKEN", ""), help="Bearer token for --url.")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--execute", action="store_true", help="Ask the server to run each query too.")
    parser.add_argument("--chat", action="store_true", help="Use /v1/chat/completions instead of /v1/sql.")
    parser.add_argument("--stream", action="store_true", help="Chat with stream: true; report time to first token.")
    parser.add_argument("--decoding", default=None,
                        help="comma-separated generate.decoding values, one started server each, e.g. eager,static")
    parser.add_argument("--out-dir", default=None, help="Write serve_load-<decoding>.json (+ -compare.json) here.")
    parser.add_argument("--startup-timeout-s", type=float, default=1200.0,
                        help="Wait this long for the started server's /healthz (compiling takes minutes).")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="Config override for the started server (repeatable).")
    parser.add_argument("--timeout-s", type=float, default=300.0, help="Client-side limit per request.")
    parser.add_argument("--max-seconds", type=float, default=0,
                        help="Send no new request after this many seconds (0 = no limit): a run on borrowed time "
                             "still reports the requests that finished.")
    parser.add_argument("--smoke", action="store_true", help="64 requests, no result file")
    parser.add_argument("--out", default=None, help=f"Result file (default {RESULT.relative_to(REPO)}).")
    args = parser.parse_args()
    # A run stopped by `timeout` (SIGTERM) still stops its server and, with --out-dir, keeps the server's log.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(124))
    if args.smoke:
        args.requests = min(args.requests, 64)

    if args.stream:
        args.chat = True
    config_path = Path(args.config) if args.config else REPO / "text2sql.yaml"
    questions = _questions(config_path)
    decodings = args.decoding.split(",") if args.decoding else [None]
    if args.url and args.decoding:
        sys.exit("--decoding starts its own servers: leave out --url")
    reports = {}
    for decoding in decodings:
        report = _run_once(args, config_path, questions, decoding)
        reports[decoding or "default"] = report
        print(json.dumps({"decoding": decoding} | {k: report[k] for k in
                                                   ("requests", "concurrency", "statuses", "latency_ms", "throughput_rps")}))
        if args.out_dir:
            _write(Path(args.out_dir) / f"serve_load-{decoding or 'default'}.json", report)
        elif not args.smoke or args.out:
            _write(Path(args.out) if args.out else RESULT, report)
    if len(reports) > 1:
        (base_name, base), (fast_name, fast) = list(reports.items())[0], list(reports.items())[-1]
        compare = {"baseline": base_name, "fast": fast_name, "concurrency": args.concurrency,
                   "p50_ratio": _ratio(fast["latency_ms"]["p50"], base["latency_ms"]["p50"]),
                   "p95_ratio": _ratio(fast["latency_ms"]["p95"], base["latency_ms"]["p95"]),
                   "throughput_ratio": _ratio(fast["throughput_rps"], base["throughput_rps"]),
                   "by_decoding": {name: {k: r[k] for k in ("statuses", "latency_ms", "throughput_rps")} |
                                   ({"first_token_ms": r["first_token_ms"]} if "first_token_ms" in r else {})
                                   for name, r in reports.items()}}
        print(json.dumps({k: compare[k] for k in ("p50_ratio", "p95_ratio", "throughput_ratio")}))
        if args.out_dir:
            _write(Path(args.out_dir) / "serve_load-compare.json", compare)
    failures = sum(n for report in reports.values() for status, n in report["statuses"].items()
                   if status == "error" or int(status) >= 500)
    if failures:
        print(f"FAIL: {failures} request(s) got a 5xx or no answer", file=sys.stderr)
        sys.exit(1)


def _run_once(args, config_path: Path, questions: list[str], decoding: str | None) -> dict:
    """Start a server (with this generate.decoding) unless --url, drive it, report."""
    server, log_file, overrides = None, None, list(args.overrides)
    url, token = args.url, args.token
    try:
        if url is None:
            token = secrets.token_urlsafe(16)
            extra = [f"generate.decoding={decoding}"] if decoding else []
            server, url, log_file, overrides = _start_server(args, config_path, token, extra)
        started = time.perf_counter()
        results = asyncio.run(_drive(url, token, questions, args))
        wall = time.perf_counter() - started
    finally:
        if server is not None:
            server.terminate()
            try:  # graceful shutdown waits for requests still generating (--max-seconds stops the sending only)
                server.wait(60)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        if log_file is not None and args.out_dir:  # the server's own account, kept beside the report (or instead)
            Path(args.out_dir).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(log_file, Path(args.out_dir) / f"serve-{decoding or 'default'}.log")
    report = _report(results, wall, args, url) | {"overrides": overrides, "decoding": decoding}
    if log_file is not None:
        report["server_log"] = _server_summary(log_file)
    return report


def _write(out: Path, report: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, out)
    print(f"wrote {out}")


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def _questions(config_path: Path) -> list[str]:
    """The dataset's questions (pairs.jsonl, read as plain JSON lines), or a few built-in ones."""
    import yaml

    raw = yaml.safe_load(config_path.read_text()) or {}
    data = raw.get("data") or {}
    pairs = config_path.parent / data.get("datasets_dir", "datasets") / data.get("dataset", "demo") / "pairs.jsonl"
    if pairs.is_file():
        found = [json.loads(line)["question"] for line in pairs.read_text().splitlines() if line.strip()]
        if found:
            return found
    return FALLBACK_QUESTIONS


def _start_server(args, config_path: Path, token: str, extra: list[str] = ()):
    models, overrides = list(args.model or []), [*args.overrides, *extra]
    if not models and args.upstream is None:
        sys.path.insert(0, str(REPO / "tests"))
        from tinymodel import tiny_model_dir

        models = [str(tiny_model_dir(str(config_path.parent / "schemas")))]
        # A random model never writes its end token: cap its replies near a real query's length.
        overrides.insert(0, f"generate.max_new_tokens={TINY_MAX_NEW_TOKENS}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, str(REPO / "cli.py"), "serve", "--config", str(config_path), "--port", str(port),
           "--set", f"serve.max_concurrency={args.concurrency}"]
    for model in models:
        cmd += ["--model", model]
    cmd += ["--upstream", args.upstream] if args.upstream else []
    for item in overrides:
        cmd += ["--set", item]
    log_file = Path(tempfile.mkstemp(prefix="serve-load-", suffix=".log")[1])
    env = {**os.environ, "TEXT2SQL_TOKEN": token}
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log_file.open("w"))
    url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    _wait_healthy(url, server, log_file, args.startup_timeout_s)
    print(f"server ready in {time.perf_counter() - started:.1f} s (load and warm-up)", file=sys.stderr, flush=True)
    return server, url, log_file, overrides


def _wait_healthy(url: str, server: subprocess.Popen, log_file: Path, timeout_s: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"the server exited ({server.returncode}):\n{log_file.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.kill()
    sys.exit(f"the server did not answer /healthz in {timeout_s:g} s")


async def _drive(url: str, token: str, questions: list[str], args) -> list[dict]:
    """`args.concurrency` workers send `args.requests` requests back to back; one record per request."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    results: list[dict] = []
    next_index = iter(range(args.requests))

    deadline = time.perf_counter() + args.max_seconds if args.max_seconds else None
    progress_every, sent, last_progress = max(1, args.requests // 10), time.perf_counter(), 0.0

    async def worker(client):
        nonlocal last_progress
        for i in next_index:
            if deadline is not None and time.perf_counter() > deadline:
                return
            question = questions[i % len(questions)]
            if args.chat:
                path = "/v1/chat/completions"
                body = {"model": "text2sql", "messages": [{"role": "user", "content": question}],
                        "stream": args.stream}
            else:
                path, body = "/v1/sql", {"question": question, "execute": args.execute}
            started, first_token = time.perf_counter(), None
            try:
                if args.stream:
                    status, payload, first_token = await _streamed(client, path, body, started)
                else:
                    response = await client.post(path, json=body)
                    status, payload = response.status_code, response.json()
            except (httpx.HTTPError, ValueError) as exc:
                status, payload = "error", {"error": f"{type(exc).__name__}: {exc}"}
            record = {"status": status, "latency_ms": (time.perf_counter() - started) * 1000,
                      "first_token_ms": first_token}
            answer = payload.get("text2sql", payload) if isinstance(payload, dict) else {}
            record |= {k: answer.get(k) for k in ("valid", "retried", "error_kind")}
            results.append(record)
            elapsed = time.perf_counter() - sent
            if len(results) % progress_every == 0 or elapsed > last_progress + PROGRESS_S:
                last_progress = elapsed  # a run killed at its limit still shows how far it got
                print(f"[{elapsed:.1f}s] {len(results)}/{args.requests} answered, "
                      f"{len(results) / elapsed:.2f} requests/s", file=sys.stderr, flush=True)

    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=args.timeout_s) as client:
        await asyncio.gather(*(worker(client) for _ in range(args.concurrency)))
    return results


async def _streamed(client, path: str, body: dict, started: float):
    """A streamed chat: (status, the last chunk's payload, ms to the first content chunk)."""
    first_token, last = None, {}
    async with client.stream("POST", path, json=body) as response:
        if response.status_code != 200:
            await response.aread()
            return response.status_code, response.json(), None
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if first_token is None and any(c.get("delta", {}).get("content") for c in chunk.get("choices", [])):
                first_token = (time.perf_counter() - started) * 1000
            if chunk.get("choices"):
                last = chunk
    return response.status_code, last, first_token


def _report(results: list[dict], wall: float, args, url: str) -> dict:
    latencies = sorted(r["latency_ms"] for r in results if r["status"] == 200)
    answered = [r for r in results if r["status"] == 200]
    first_tokens = sorted(r["first_token_ms"] for r in answered if r.get("first_token_ms") is not None)
    extra = {"first_token_ms": {f"p{q}": _percentile(first_tokens, q) for q in (50, 95)}} if args.stream else {}
    return extra | {
        "requests": len(results), "requests_asked": args.requests, "concurrency": args.concurrency,
        "endpoint": ("chat-stream" if args.stream else "chat") if args.chat else "sql",
        "execute": args.execute,
        "server": "external " + url if args.url else ("upstream " + args.upstream if args.upstream else
                                                       f"local {'+'.join(args.model or ['tiny test model'])}"),
        "models": list(args.model or []),
        "statuses": {str(k): v for k, v in sorted(Counter(r["status"] for r in results).items(), key=str)},
        "latency_ms": {f"p{q}": _percentile(latencies, q) for q in (50, 95, 99)} | {
            "mean": round(statistics.fmean(latencies), 1) if latencies else None,
            "max": round(latencies[-1], 1) if latencies else None},
        "throughput_rps": round(len(answered) / wall, 2) if wall else None,
        "wall_s": round(wall, 2),
        "valid_rate": round(sum(bool(r["valid"]) for r in answered) / len(answered), 3) if answered else None,
        "retried_rate": round(sum(bool(r["retried"]) for r in answered) / len(answered), 3) if answered else None,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "gpu": _gpu_name()},
    }


def _percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (no interpolation), in ms."""
    if not sorted_values:
        return None
    rank = max(1, -(-len(sorted_values) * q // 100))
    return round(sorted_values[int(rank) - 1], 1)


def _server_summary(log_file: Path) -> dict:
    """The server's own account in its log: generation batch sizes, where each request's time went (waiting for
    replies vs judging and running them), and the engine's decode and prefill time (its shutdown line)."""
    requests, engine = [], None
    for line in log_file.read_text().splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("event") == "request" and entry.get("batch"):
                requests.append(entry)
            elif entry.get("event") == "shutdown":
                engine = entry.get("engine")
    batches = [e["batch"] for e in requests]
    summary = {"mean_batch": round(statistics.fmean(batches), 2) if batches else None,
               "max_batch": max(batches) if batches else None}
    for key in ("gen_ms", "run_ms"):
        values = sorted(e[key] for e in requests if key in e)
        summary[key] = {"p50": _percentile(values, 50), "mean": round(statistics.fmean(values), 1) if values else None}
    if engine:
        summary["engine"] = engine
    return summary


def _gpu_name() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


if __name__ == "__main__":
    main()
