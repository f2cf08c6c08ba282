"""The FastAPI app: `create_app` wires the snapshot, backend, pipeline and guard into routes; `run` serves it."""

import asyncio
import copy
import json
import logging
import os
import time
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from pydantic import BaseModel

from text2sql.catalog import load_snapshot
from text2sql.errors import MODEL_PACKAGES, ConfigError, ModelError, require, require_all
from text2sql.feedback import FeedbackRequest, FeedbackStore, feedback_path, feedback_record
from text2sql.generate import Sampling, load_generator
from text2sql.prompt import PromptBuilder
from text2sql.serve.backends import _LocalBackend, _UpstreamBackend
from text2sql.serve.engine_backend import EngineBackend
from text2sql.serve.guard import _Guard
from text2sql.serve.openai import (ENGINE_OWNER, MODEL_ID, ChatRequest, SQLRequest, _APIError, _chat_completion,
                                   _check_question, _error_response, _streamed_chat, _text)
from text2sql.serve.pipeline import _Member, _Pipeline, _prompt_settings_only
from text2sql.warehouse import QueryRunner

if TYPE_CHECKING:
    from fastapi import FastAPI

    from text2sql.config import Config

STATIC_DIR = Path(__file__).parent.parent / "static"
SHUTDOWN_GRACE_S = 30
"""Seconds uvicorn waits for requests in flight after SIGTERM/SIGINT before closing them."""
WARMUP_QUESTION = "How many rows are there?"
"""Asked once at startup (static decoding): prefills the schema's KV cache and compiles the decode step."""

log = logging.getLogger("text2sql.serve")


def create_app(cfg: "Config", model_dir: str | Path | Sequence[str | Path] | None = None,
               upstream: str | Sequence[str] | None = None, strict: bool = False) -> "FastAPI":
    """The FastAPI app: loads the schema snapshot, the model(s) (or the upstream clients) and the query sandbox.

    Args:
        cfg: the project config (`serve`, `generate`, `warehouse` and `prompt` sections).
        model_dir: a merged/adapter/base model dir (or known name) to generate with; with `upstream`, only its
            tokenizer and prompt.json are used (so the prompt is the one it was trained with). Several: an
            ensemble, each member answering in its own prompt (`pipeline._Pipeline`); with several upstreams,
            one model dir for all of them or one per upstream.
        upstream: an OpenAI-compatible engine URL (default `serve.upstream`), or several (an ensemble);
            empty = generate locally.
        strict: refuse to start when schemas/ changed since the model was trained (else a warning).

    Raises:
        ModelError: neither a model nor an upstream is given, or a model cannot be loaded.
        ConfigError: upstreams with more than one model dir, but not one per upstream; an ensemble with
            `generate.num_candidates` > 1.
        SchemaSnapshotError: schemas/ is missing or the warehouse cannot be opened; with `strict`, schemas/
            changed since the model was trained.
    """
    require("fastapi", "serve")
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles
    from starlette.exceptions import HTTPException

    s = cfg.serve
    models, upstreams = _listed(model_dir), _listed(s.upstream if upstream is None else upstream)
    if not models and not upstreams:
        raise ModelError("serve needs a model to generate with: give --model DIR (a merged model dir) "
                         "or --upstream URL")
    if upstreams and len(models) > 1 and len(models) != len(upstreams):
        raise ConfigError(f"{len(upstreams)} --upstream and {len(models)} --model: give one --model for all the "
                          "upstreams (its tokenizer and prompt.json) or one per --upstream, in the same order")
    size = len(upstreams) or len(models)
    if size > 1 and cfg.generate.num_candidates > 1:
        raise ConfigError(f"generate.num_candidates={cfg.generate.num_candidates} with an ensemble of {size} "
                          "models: its candidates are the members' answers, one each; set generate.num_candidates=1")
    if not upstreams:
        require_all(MODEL_PACKAGES, "train")
    elif models:  # the tokenizer of the model the upstream serves
        require_all(("transformers",), "train")
    snapshot = load_snapshot(cfg)
    # Before the query workers start: with `strict` a changed schema stops here, leaving nothing running.
    members = _upstream_members(cfg, upstreams, models, strict) if upstreams else _local_members(cfg, models, strict)
    backends = [m.backend for m in members]
    runner = QueryRunner.from_config(cfg, workers=s.query_workers, snapshot=snapshot)
    pipeline = _Pipeline(snapshot, members, runner, s.retries, s.query_workers)
    if cfg.generate.num_candidates > 1:
        g = cfg.generate
        pipeline.num_candidates, pipeline.sampling = g.num_candidates, Sampling(g.temperature, g.top_p, g.seed)
    token = os.environ.get(s.token_env, "") if s.token_env else ""
    max_new_tokens = cfg.generate.max_new_tokens
    max_rows_cap = cfg.warehouse.max_rows
    feedback = FeedbackStore(feedback_path(cfg))
    answered_by = "+".join(m.name for m in members)  # an ensemble's answers are its members' together
    ensemble = {"members": [m.name for m in members]} if len(members) > 1 else {}

    @asynccontextmanager
    async def lifespan(app):
        for b in backends:
            await b.start()
        for i, b in enumerate(backends):  # one after another: each compiles for itself
            if hasattr(b, "warm"):
                await b.warm(pipeline.messages(WARMUP_QUESTION, i), max_new_tokens)
        log.info("startup", extra={"fields": {
            "backend": backends[0].kind, "engine": backends[0].engine_id, "auth": bool(token),
            "tables": len(snapshot.tables), "retries": s.retries, "max_batch_size": s.max_batch_size,
            "max_concurrency": s.max_concurrency, **ensemble}})
        try:
            yield
        finally:
            # uvicorn has drained the connections by now: nothing waits on the batcher or the query workers.
            for b in backends:
                await b.close()
            await asyncio.to_thread(pipeline.close)
            engine = backends[0].stats() if len(backends) == 1 and hasattr(backends[0], "stats") else {}
            log.info("shutdown", extra={"fields": {"engine": engine} if engine else {}})

    app = FastAPI(title="text2sql", version="1", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_middleware(_Guard, token=token, max_body_bytes=s.max_body_bytes, max_concurrency=s.max_concurrency)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.exception_handler(_APIError)
    async def api_error(request: Request, exc: _APIError):
        return _error_response(exc.status, exc.message, exc.code)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return _error_response(400, "request body is not valid JSON", "invalid_json")
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'body'}: {e.get('msg')}"
                             for e in errors[:5])
        return _error_response(422, problems, "invalid_request")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return _error_response(exc.status_code, str(exc.detail), None)

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/")
    async def page():
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    @app.post("/v1/feedback")
    async def post_feedback(body: FeedbackRequest, request: Request):
        question = _check_question(body.question, s.max_question_chars)
        sql = (body.sql or "").strip() if body.verdict == "wrong" else body.model_sql.strip()
        if not sql:
            raise _APIError(422, "a wrong answer needs the corrected SQL in `sql`", "invalid_request")
        problem = await pipeline.validate(sql)
        if problem:
            raise _APIError(422, f"the {'corrected' if body.verdict == 'wrong' else 'model'} SQL is not usable: "
                                 f"{problem}", "invalid_sql")
        record = feedback_record(question, sql, body.model_sql, body.verdict, answered_by)
        await asyncio.to_thread(feedback.append, record)
        request.state.log = {"feedback": body.verdict}
        return JSONResponse({"id": record["id"], "created": record["created"]}, 201)

    @app.get("/v1/models")
    async def models():
        created = int(time.time())
        data = [{"id": MODEL_ID, "object": "model", "created": created, "owned_by": MODEL_ID, **ensemble}]
        for engine_id in dict.fromkeys(b.engine_id for b in backends if b.engine_id):
            data.append({"id": engine_id, "object": "model", "created": created, "owned_by": ENGINE_OWNER})
        return {"object": "list", "data": data}

    @app.post("/v1/sql")
    async def sql(request: Request):
        started = time.perf_counter()
        body = _json_body(SQLRequest, await request.body(), RequestValidationError)
        question = _check_question(body.question, s.max_question_chars)
        max_rows = min(body.max_rows or max_rows_cap, max_rows_cap)
        answer = await pipeline.answer(question, max_new_tokens, execute=body.execute, max_rows=max_rows)
        request.state.log = answer.log_fields(len(question))
        return JSONResponse(answer.to_json(started))

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        if body.n != 1:
            raise _APIError(400, "n must be 1: one SQL query per question", "invalid_request")
        limit = min(body.max_completion_tokens or body.max_tokens or max_new_tokens, max_new_tokens)
        messages = [{"role": m.role, "content": _text(m.content)} for m in body.messages]
        engine = next((b for b in backends if b.engine_id and b.engine_id == body.model != MODEL_ID), None)
        if engine is not None:
            async def reply(on_text=None):
                done = await engine.complete(messages, limit, on_text=on_text)
                request.state.log = {"engine": True, "batch": done.batch_size}
                return done.text, "stop", (done.prompt_tokens, done.completion_tokens), None
        else:
            question = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
            question = _check_question(question, s.max_question_chars)

            async def reply(on_text=None):
                answer = await pipeline.answer(question, limit, on_text=on_text)
                content = answer.sql if answer.valid else f"-- no valid query ({answer.error_kind}): {answer.error}"
                finish = "content_filter" if answer.error_kind == "refused" else "stop"
                request.state.log = answer.log_fields(len(question))
                # without a start time: no latency_ms in the chat reply
                return content, finish, (answer.prompt_tokens, answer.completion_tokens), answer.to_json()
        if not body.stream:
            return JSONResponse(_chat_completion(body.model, *await reply()))
        include_usage = bool((body.stream_options or {}).get("include_usage"))
        return await _streamed_chat(body.model, reply, include_usage)

    return app


def run(cfg: "Config", model_dir: str | Path | Sequence[str | Path] | None = None, host: str | None = None,
        port: int | None = None, upstream: str | Sequence[str] | None = None, strict: bool = False) -> None:
    """Serve until SIGINT/SIGTERM (the `text2sql serve` command).

    Raises:
        ConfigError: a non-loopback address without a token (anyone on the network could query the warehouse);
            a port out of range, a host that does not resolve, or an address already in use.
    """
    uvicorn = require("uvicorn", "serve")
    s = cfg.serve
    host = host or s.host
    port = s.port if port is None else port
    if host not in ("127.0.0.1", "localhost", "::1") and not (s.token_env and os.environ.get(s.token_env)):
        raise ConfigError(f"serving on {host} needs a bearer token: set ${s.token_env or 'TEXT2SQL_TOKEN'} "
                          "(serve.token_env names the variable), or bind 127.0.0.1")
    _check_address(host, port)  # before the model loads: a bad or busy port fails at once, not minutes later
    configure_logging()
    app = create_app(cfg, model_dir, upstream, strict)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, access_log=False, log_level="info",
                                           timeout_graceful_shutdown=SHUTDOWN_GRACE_S, lifespan="on"))
    server.run()


def _listed(value: str | Path | Sequence[str | Path] | None) -> list[str]:
    """One or several model dirs or URLs as a list (None or empty: none)."""
    if not value:
        return []
    return [str(value)] if isinstance(value, (str, Path)) else [str(v) for v in value if v]


def _on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def _local_members(cfg: "Config", models: list[str], strict: bool) -> list[_Member]:
    """Each model loaded in turn with its own backend, and the prompt builder of its own prompt settings (members
    may have been trained with different ones: k-shot 3 and 0)."""
    s, members = cfg.serve, []
    # Each member's engine steps in its own thread, and torch.compile's CUDA graphs fail there (the H200, v0.9;
    # pytorch/pytorch#123177): an ensemble decodes eagerly on a GPU.
    if len(models) > 1 and cfg.generate.decoding == "static" and _on_gpu():
        raise ConfigError("an ensemble cannot serve with generate.decoding=static on a GPU: capturing several "
                          "models' CUDA graphs in one server fails (cudaErrorStreamCaptureInvalidated); use eager "
                          "or auto")
    for model in models:
        gen = load_generator(model, cfg)
        if len(models) > 1 and gen.decoding == "static" and _on_gpu():
            gen.decoding = "eager"  # auto: see the refusal above
        # The generation thread encodes with the model's tokenizer while requests build prompts: each gets its own
        # (a Rust tokenizer whose settings change during an encode raises "Already borrowed", tokenizers#537).
        tokenizer = copy.deepcopy(gen.tokenizer)
        if gen.decoding == "static":
            backend: EngineBackend | _LocalBackend = EngineBackend(gen, s.max_batch_size, s.max_concurrency,
                                                                   s.torch_threads)
        else:
            backend = _LocalBackend(gen, s.max_batch_size, s.max_concurrency, s.torch_threads)
        prompts = PromptBuilder.for_model(cfg, gen.settings, tokenizer, strict=strict, who="serve")
        members.append(_Member(backend, prompts, str(gen.model_dir or model)))
    return members


def _upstream_members(cfg: "Config", upstreams: list[str], models: list[str], strict: bool) -> list[_Member]:
    """One member per upstream engine; its prompt from the one model dir given for all, or from its own."""
    s = cfg.serve
    token = os.environ.get(s.upstream_token_env, "") if s.upstream_token_env else ""
    builders: dict[str | None, PromptBuilder] = {}
    members = []
    for i, url in enumerate(upstreams):
        model = models[i] if len(models) == len(upstreams) else (models[0] if models else None)
        if model not in builders:  # a model dir shared by the upstreams: one tokenizer, one builder
            settings, tokenizer = _prompt_settings_only(cfg, model)
            builders[model] = PromptBuilder.for_model(cfg, settings, tokenizer, strict=strict, who="serve")
        backend = _UpstreamBackend(url, s.upstream_model, token, s.upstream_timeout_s, s.max_concurrency)
        # Feedback names the model the engine serves when each has its own, else the engine.
        name = model if model and len(models) == len(upstreams) else url
        members.append(_Member(backend, builders[model], name))
    return members


def _check_address(host: str, port: int) -> None:
    """Refuse a port out of range, a host that does not resolve, or an address something else listens on."""
    import socket

    if not 1 <= port <= 65535:
        raise ConfigError(f"port {port}: a TCP port is 1-65535 (--port or serve.port)")
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise ConfigError(f"host {host!r}: cannot resolve it ({exc.strerror}; --host or serve.host)") from None
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no conflict
        try:
            probe.bind(address)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror} (another server there? "
                              "choose another --port)") from None


def _json_body(model: type[BaseModel], raw: bytes, invalid: type[Exception]) -> Any:
    """The request body parsed as JSON into `model`, whatever the content type says: `curl -d` sends
    application/x-www-form-urlencoded, and FastAPI would then not parse the JSON at all (issue 19)."""
    from pydantic import ValidationError

    try:
        data = json.loads(raw) if raw.strip() else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise invalid([{"type": "json_invalid", "loc": ("body",), "msg": "not valid JSON"}]) from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None


def configure_logging(stream: Any = None) -> None:
    """Send the server's log (one JSON object per line) to stderr, or `stream`."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_JSONFormatter())
    log.handlers = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False


class _JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
                 "level": record.levelname.lower(), "event": record.getMessage(), **getattr(record, "fields", {})}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)
