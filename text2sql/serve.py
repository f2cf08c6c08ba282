"""The HTTP server a BI chatbot talks to: question in, checked SQL (and its rows) out.

    text2sql serve --model DIR [--host 127.0.0.1] [--port 8000] [--upstream URL]

Endpoints (all but /healthz need `Authorization: Bearer $TEXT2SQL_TOKEN` when that variable is set):

- `POST /v1/sql` `{question, execute?, max_rows?}` -> `{sql, tables, valid, error?, error_kind?, columns?, rows?,
  truncated?, latency_ms, retried}`.
- `POST /v1/chat/completions`, OpenAI-compatible. `stream: true` sends the model's tokens as they come (server-sent
  events, OpenAI chunks), then a final chunk with the finish reason and a `text2sql` object: the checked SQL, and
  its error (a refusal's reason) if it is not valid. With model `text2sql` (or any name but the engine's) the last user message is the question and the reply
  is the checked SQL; with the engine's model id (see `/v1/models`) the messages go to the model as they are,
  the way vLLM would serve them: that is what another instance's `--upstream` sends.
- `POST /v1/feedback` `{question, model_sql, verdict: right|wrong, sql?}`: the answer marked right, or wrong with
  the corrected SQL; the SQL kept is checked and run in the sandbox first (422 if it fails), then appended to
  `datasets/<name>/feedback.jsonl` (see `text2sql.feedback`).
- `GET /`: the chat page (`text2sql/static/`), which calls `/v1/sql` and `/v1/feedback` with the token typed in it.
- `GET /v1/models`, `GET /healthz`.

Each question takes these steps, in `_Pipeline.answer`: the prompt from schemas/ through `prompt.PromptBuilder`
with the model's own prompt settings (exactly as `predict` builds it) -> the backend -> `warehouse.judge_reply`
(the reply judged whole, as eval judges it) -> when asked, the sandboxed `QueryRunner` -> on an error,
`serve.retries` more attempts with the error added as a user turn (`correction_messages`).

Backends: a local transformers model, either with `generate.decoding: static` (`text2sql.serve_engine`: requests
join the running decode batch at its next step, up to `serve.max_batch_size` slots, tokens streamed as they come)
or eager, where an asyncio batcher gathers the requests that arrive while a batch runs into the next one (up to
`serve.max_batch_size`, generation in one worker thread, a bounded queue); or `--upstream URL`, any OpenAI-compatible engine, which gets the rendered messages and only generates.

Operation: bearer-token auth, request body limit (413), question length limit (422), at most
`serve.max_concurrency` requests in flight (429 past that, never a wait), one JSON log line per request
(never the token or the question), graceful shutdown (uvicorn drains connections, then the batcher and
the query workers close).
"""

import asyncio
import copy
import hmac
import json
import logging
import math
import os
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

# pydantic comes with pyiceberg (a core dependency); fastapi and uvicorn are imported only when serving.
from pydantic import BaseModel, ConfigDict, Field

from text2sql.errors import MODEL_PACKAGES, ConfigError, ModelError, require, require_all
from text2sql.feedback import FeedbackRequest, FeedbackStore, feedback_path, feedback_record

if TYPE_CHECKING:
    from fastapi import FastAPI

    from text2sql.catalog import SchemaSnapshot
    from text2sql.config import Config
    from text2sql.prompt import PromptBuilder, PromptSettings
    from text2sql.warehouse import QueryResult, QueryRunner

MODEL_ID = "text2sql"
"""The pipeline's model id in /v1/models and chat completions: question -> checked SQL."""
ENGINE_OWNER = "text2sql-engine"
"""`owned_by` of the raw engine entry in /v1/models (the pipeline's is `text2sql`)."""
RETRY_PROMPT = "That query failed ({kind}): {message}\nWrite a corrected query. Reply with the SQL query only."
"""The user turn added after a failed attempt; the failed SQL is the assistant turn before it."""
OPEN_PATHS = frozenset({"/healthz", "/", "/favicon.ico"})
"""Paths served without the token (also everything under /static/: the page asks for the token itself)."""
STATIC_DIR = Path(__file__).parent / "static"
SHUTDOWN_GRACE_S = 30
"""Seconds uvicorn waits for requests in flight after SIGTERM/SIGINT before closing them."""
BODY_TIMEOUT_S = 30.0
"""A client that takes longer to send its body gets 408 (and frees its slot)."""
WARMUP_QUESTION = "How many rows are there?"
"""Asked once at startup (static decoding): prefills the schema's KV cache and compiles the decode step."""
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")

log = logging.getLogger("text2sql.serve")


def correction_messages(messages: list[dict[str, str]], failed: str, kind: str, message: str) -> list[dict[str, str]]:
    """The chat for a self-correction attempt: the failed reply as the assistant turn, then the error as a user turn.

    >>> chat = correction_messages([{"role": "user", "content": "q"}], "SELECT nme FROM t", "unknown_column", "no nme")
    >>> [m["role"] for m in chat], chat[1]["content"], chat[2]["content"].splitlines()[0]
    (['user', 'assistant', 'user'], 'SELECT nme FROM t', 'That query failed (unknown_column): no nme')
    """
    return [*messages, {"role": "assistant", "content": failed},
            {"role": "user", "content": RETRY_PROMPT.format(kind=kind, message=message)}]


def create_app(cfg: "Config", model_dir: str | Path | None = None, upstream: str | None = None,
               strict: bool = False) -> "FastAPI":
    """The FastAPI app: loads the schema snapshot, the model (or the upstream client) and the query sandbox.

    Args:
        cfg: the project config (`serve`, `generate`, `warehouse` and `prompt` sections).
        model_dir: a merged/adapter/base model dir (or known name) to generate with; with `upstream`, only its
            tokenizer and prompt.json are used (so the prompt is the one it was trained with).
        upstream: an OpenAI-compatible engine URL (default `serve.upstream`); empty = generate locally.
        strict: refuse to start when schemas/ changed since the model was trained (else a warning).

    Raises:
        ModelError: neither a model nor an upstream is given, or the model cannot be loaded.
        SchemaSnapshotError: schemas/ is missing or the warehouse cannot be opened; with `strict`, schemas/
            changed since the model was trained.
    """
    require("fastapi", "serve")
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles
    from starlette.exceptions import HTTPException

    from text2sql.catalog import load_snapshot
    from text2sql.prompt import PromptBuilder
    from text2sql.warehouse import QueryRunner

    s = cfg.serve
    upstream = s.upstream if upstream is None else upstream
    if not model_dir and not upstream:
        raise ModelError("serve needs a model to generate with: give --model DIR (a merged model dir) "
                         "or --upstream URL")
    if not upstream:
        require_all(MODEL_PACKAGES, "train")
    elif model_dir:  # the tokenizer of the model the upstream serves
        require_all(("transformers",), "train")
    snapshot = load_snapshot(cfg)
    if upstream:
        settings, tokenizer = _prompt_settings_only(cfg, model_dir)
        backend: _LocalBackend | _UpstreamBackend = _UpstreamBackend(
            upstream, s.upstream_model, os.environ.get(s.upstream_token_env, "") if s.upstream_token_env else "",
            s.upstream_timeout_s, s.max_concurrency)
    else:
        from text2sql.generate import load_generator

        gen = load_generator(model_dir, cfg)
        settings = gen.settings
        # The generation thread encodes with the model's tokenizer while requests build prompts: each gets its own
        # (a Rust tokenizer whose settings change during an encode raises "Already borrowed", tokenizers#537).
        tokenizer = copy.deepcopy(gen.tokenizer)
        if gen.decoding == "static":
            from text2sql.serve_engine import EngineBackend

            backend = EngineBackend(gen, s.max_batch_size, s.max_concurrency, s.torch_threads)
        else:
            backend = _LocalBackend(gen, s.max_batch_size, s.max_concurrency, s.torch_threads)
    # Before the query workers start: with `strict` a changed schema stops here, leaving nothing running.
    prompts = PromptBuilder.for_model(cfg, settings, tokenizer, strict=strict, who="serve")
    runner = QueryRunner.from_config(cfg, workers=s.query_workers, snapshot=snapshot)
    pipeline = _Pipeline(snapshot, backend, prompts, runner, s.retries, s.query_workers)
    if cfg.generate.num_candidates > 1:
        from text2sql.generate import Sampling

        g = cfg.generate
        pipeline.num_candidates, pipeline.sampling = g.num_candidates, Sampling(g.temperature, g.top_p, g.seed)
    token = os.environ.get(s.token_env, "") if s.token_env else ""
    max_new_tokens = cfg.generate.max_new_tokens
    max_rows_cap = cfg.warehouse.max_rows
    feedback = FeedbackStore(feedback_path(cfg))
    answered_by = str(getattr(backend, "gen", None) and backend.gen.model_dir or model_dir or upstream)

    @asynccontextmanager
    async def lifespan(app):
        await backend.start()
        if hasattr(backend, "warm"):
            await backend.warm(pipeline.messages(WARMUP_QUESTION), max_new_tokens)
        log.info("startup", extra={"fields": {
            "backend": backend.kind, "engine": backend.engine_id, "auth": bool(token), "tables": len(snapshot.tables),
            "retries": s.retries, "max_batch_size": s.max_batch_size, "max_concurrency": s.max_concurrency}})
        try:
            yield
        finally:
            # uvicorn has drained the connections by now: nothing waits on the batcher or the query workers.
            await backend.close()
            await asyncio.to_thread(pipeline.close)
            log.info("shutdown", extra={"fields": {}})

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
        data = [{"id": MODEL_ID, "object": "model", "created": created, "owned_by": MODEL_ID}]
        if backend.engine_id:
            data.append({"id": backend.engine_id, "object": "model", "created": created, "owned_by": ENGINE_OWNER})
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
        if backend.engine_id and body.model == backend.engine_id and body.model != MODEL_ID:
            async def reply(on_text=None):
                done = await backend.complete(messages, limit, on_text=on_text)
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


def run(cfg: "Config", model_dir: str | Path | None = None, host: str | None = None, port: int | None = None,
        upstream: str | None = None, strict: bool = False) -> None:
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


# ---------------------------------------------------------------- request shapes


class SQLRequest(BaseModel):
    """Body of POST /v1/sql. Unknown keys are an error: a typo such as `exectue` must not pass silently."""

    model_config = ConfigDict(extra="forbid")
    question: str
    execute: bool = False
    max_rows: int | None = Field(None, ge=1)
    """Row cap for this request; never above warehouse.max_rows."""


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(BaseModel):
    """Body of POST /v1/chat/completions; OpenAI's other fields are accepted and ignored (decoding is greedy)."""

    model_config = ConfigDict(extra="allow")
    model: str = MODEL_ID
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    n: int = 1


def _text(content: Any) -> str:
    """A message's text: a string, or OpenAI content parts (text parts joined; images and the like dropped)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if part.get("type") == "text")


def _check_question(question: str, max_chars: int) -> str:
    question = question.strip()
    if not question:
        raise _APIError(422, "the question is empty", "invalid_request")
    if len(question) > max_chars:
        raise _APIError(422, f"the question has {len(question)} characters; at most {max_chars} are allowed "
                             "(serve.max_question_chars)", "question_too_long")
    return question


def _chat_completion(model: str, content: str, finish: str, usage: tuple[int, int], extension: dict | None) -> dict:
    reply = {
        "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish,
                     "logprobs": None}],
        "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": usage[0] + usage[1]},
    }
    if extension is not None:
        reply["text2sql"] = extension  # what a BI client needs beyond the SQL: validity, tables, error, retried
    return reply


async def _streamed_chat(model: str, reply, include_usage: bool):
    """Server-sent events: a role chunk, a content chunk per piece of text the model writes, a final chunk with
    the finish reason (and, for the pipeline, `text2sql`: the checked SQL, or why it was refused), [usage], [DONE].

    `reply(on_text)` produces (content, finish, usage, extension). An error before any text keeps its own status;
    one after the stream has begun is sent as an `error` event."""
    from fastapi.responses import StreamingResponse

    texts: asyncio.Queue[str] = asyncio.Queue()
    task = asyncio.ensure_future(reply(texts.put_nowait))
    first = asyncio.ensure_future(texts.get())
    await asyncio.wait({task, first}, return_when=asyncio.FIRST_COMPLETED)
    if task.done() and task.exception() is not None and not first.done():
        first.cancel()
        raise task.exception()
    base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model}

    def chunk(delta: dict, finish: str | None = None, **extra) -> str:
        return _sse({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra})

    async def events():
        waiting = first
        try:
            yield chunk({"role": "assistant", "content": ""})
            while True:
                await asyncio.wait({task, waiting}, return_when=asyncio.FIRST_COMPLETED)
                if waiting.done():
                    yield chunk({"content": waiting.result()})
                    waiting = asyncio.ensure_future(texts.get())
                    continue
                waiting.cancel()
                while not texts.empty():
                    yield chunk({"content": texts.get_nowait()})
                break
            try:
                content, finish, usage, extension = task.result()
            except _APIError as exc:
                yield _sse({"error": {"message": exc.message, "type": "server_error", "code": exc.code}})
                yield "data: [DONE]\n\n"
                return
            yield chunk({}, finish, **({"text2sql": extension} if extension is not None else {}))
            if include_usage:
                yield _sse({**base, "choices": [], "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1],
                                                             "total_tokens": usage[0] + usage[1]}})
            yield "data: [DONE]\n\n"
        finally:
            waiting.cancel()
            task.cancel()

    return StreamingResponse(events(), media_type="text/event-stream")


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj)}\n\n"


class _APIError(Exception):
    """An error a client gets as `{"error": {"message", "type", "code"}}` with this status."""

    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def _error_response(status: int, message: str, code: str | None):
    from fastapi.responses import JSONResponse

    kind = {401: "authentication_error", 429: "rate_limit_error"}.get(status)
    kind = kind or ("invalid_request_error" if status < 500 else "server_error")
    headers = {401: {"WWW-Authenticate": "Bearer"}, 429: {"Retry-After": "1"}}.get(status)
    return JSONResponse({"error": {"message": message, "type": kind, "code": code}}, status, headers=headers)


def _json_value(value: Any) -> Any:
    """A value JSON can carry: NaN/inf -> null, anything exotic (UUID, interval) -> its string."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    return str(value)


# ---------------------------------------------------------------- the pipeline


@dataclass
class _Completion:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    batch_size: int = 1
    """Requests that shared the generation batch (local backend)."""
    logprob: float = float("-inf")
    """Sum of the reply's token log-probabilities, when the backend gives them (candidate selection's tie-break)."""


@dataclass
class _Answer:
    sql: str
    tables: list[str]
    valid: bool
    error_kind: str | None = None
    error: str = ""
    result: "QueryResult | None" = None
    retried: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    batch_size: int = 1

    def to_json(self, started: float | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"sql": self.sql, "tables": self.tables, "valid": self.valid, "retried": self.retried}
        if self.error_kind:
            out |= {"error": self.error, "error_kind": self.error_kind}
        if self.result is not None and not self.result.error_kind:
            result = self.result.to_json()
            out |= {"columns": result["columns"], "rows": _json_value(result["rows"]), "truncated": result["truncated"]}
        if started is not None:
            out["latency_ms"] = round((time.perf_counter() - started) * 1000, 1)
        return out

    def log_fields(self, question_chars: int) -> dict[str, Any]:
        return {"valid": self.valid, "error_kind": self.error_kind, "retried": self.retried, "batch": self.batch_size,
                "executed": self.result is not None, "question_chars": question_chars}


class _Pipeline:
    """Question -> prompt -> backend -> SQL -> check -> (execute) -> (retry with the error)."""

    num_candidates = 1
    """First attempt from this many candidates (`text2sql.select`); retries, if needed, are greedy as before."""
    sampling: Any = None

    def __init__(self, snapshot: "SchemaSnapshot", backend: Any, prompts: "PromptBuilder", runner: "QueryRunner",
                 retries: int, query_workers: int):
        self.snapshot, self.backend, self.prompts = snapshot, backend, prompts
        self.runner, self.retries = runner, retries
        self._queries = ThreadPoolExecutor(max(1, query_workers), thread_name_prefix="text2sql-query")

    def messages(self, question: str) -> list[dict[str, str]]:
        """The prompt, built as `generate.predict` builds it for a lakehouse question (db None)."""
        return self.prompts.messages(question, db=None)

    async def answer(self, question: str, max_new_tokens: int, execute: bool = False, max_rows: int = 0,
                     on_text: Callable[[str], None] | None = None) -> _Answer:
        """`on_text` gets the model's text as it comes (each attempt's; a retry starts on a new line)."""
        from text2sql.warehouse import judge_reply

        messages = self.messages(question)
        prompt_tokens = completion_tokens = 0
        for attempt in range(self.retries + 1):
            if on_text is not None and attempt:
                on_text("\n")
            if attempt == 0 and self.num_candidates > 1:
                done, sql = await self._best_candidate(messages, max_new_tokens)
                if on_text is not None:
                    on_text(done.text)
            else:
                done = await self.backend.complete(messages, max_new_tokens, on_text=on_text)
                sql = None
            prompt_tokens += done.prompt_tokens
            completion_tokens += done.completion_tokens
            # The reply is judged whole, by the function eval judges with: "DROP TABLE t; SELECT ..." is refused.
            judged, check = judge_reply(done.text, self.snapshot)
            sql = judged if judged is not None else (sql or done.text.strip())
            answer = _Answer(sql, check.tables, check.ok, check.kind, "" if check.ok else check.message,
                             retried=attempt > 0, batch_size=done.batch_size)
            if check.ok and execute:
                loop = asyncio.get_running_loop()
                answer.result = await loop.run_in_executor(self._queries, self.runner.run, sql, max_rows)
                answer.error_kind, answer.error = answer.result.error_kind, answer.result.error
            # A timeout is not retried: a second slow query doubles the wait, and the model cannot fix "too slow".
            if answer.error_kind in (None, "timeout") or attempt == self.retries:
                break
            messages = correction_messages(messages, sql, answer.error_kind, answer.error)
        answer.prompt_tokens, answer.completion_tokens = prompt_tokens, completion_tokens
        return answer

    async def _best_candidate(self, messages: list[dict[str, str]], max_new_tokens: int) -> tuple[_Completion, str | None]:
        """The candidate most of `num_candidates` agree on by result (each one checked and run in the sandbox);
        the greedy one when none is valid, so the retry loop then corrects it as it would a greedy reply."""
        from text2sql.select import select_candidate

        done, candidates = await self.backend.candidates(messages, max_new_tokens, self.num_candidates, self.sampling)
        loop = asyncio.get_running_loop()
        selection = await loop.run_in_executor(self._queries, select_candidate, candidates, self.runner, self.snapshot)
        chosen = candidates[selection.index]
        return _Completion(chosen.raw, done.prompt_tokens, done.completion_tokens, done.batch_size), chosen.sql

    async def validate(self, sql: str) -> str:
        """Why `sql` cannot be kept ('' when it passes the check and runs in the sandbox)."""
        from text2sql.warehouse import check_sql

        check = check_sql(sql, self.snapshot)
        if not check.ok:
            return f"{check.kind}: {check.message}"
        result = await asyncio.get_running_loop().run_in_executor(self._queries, self.runner.run, sql, 1)
        return f"{result.error_kind}: {result.error}" if result.error_kind else ""

    def close(self) -> None:
        self._queries.shutdown(wait=True)
        self.runner.close()


def _prompt_settings_only(cfg: "Config", model_dir: str | Path | None) -> tuple["PromptSettings", Any]:
    """Upstream mode: the model's prompt settings and tokenizer (for the prompt budgets), without its weights;
    the model dir is found as `load_generator` finds it."""
    from text2sql.prompt import PromptSettings, model_prompt_settings

    if not model_dir:
        return PromptSettings(cfg.prompt), None  # the budgets are then counted as 4 characters a token
    from transformers import AutoTokenizer

    from text2sql.models import resolve_model_dir

    path = resolve_model_dir(cfg, model_dir)
    settings = model_prompt_settings(path, cfg.prompt)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # no tokenizer files, or unreadable ones
        raise ModelError(f"cannot load the tokenizer of {path} (needed for the prompt's budgets): {exc}") from exc
    return settings, tokenizer


# ---------------------------------------------------------------- backends


class _LocalBackend:
    """A transformers model behind an asyncio batcher.

    Requests wait in a bounded queue; one loop takes what is queued (up to `max_batch_size`) as one batch and
    runs `generate` in a single worker thread, so requests that arrive during a batch share the next one.
    """

    kind = "local"

    def __init__(self, gen: Any, max_batch_size: int, queue_size: int, torch_threads: int):
        import torch

        self.gen, self.max_batch_size, self.queue_size = gen, max_batch_size, queue_size
        self.engine_id = Path(gen.model_dir).name if gen.model_dir else "model"
        # Set in the generation thread itself: OpenMP thread counts belong to the calling thread.
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="text2sql-generate",
                                          initializer=torch.set_num_threads,
                                          initargs=(torch_threads or max(1, (os.cpu_count() or 2) - 1),))
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._queue = asyncio.Queue(self.queue_size)
        self._task = asyncio.create_task(self._batches(), name="text2sql-batcher")

    async def complete(self, messages: list[dict[str, str]], max_new_tokens: int,
                       on_text: Callable[[str], None] | None = None) -> _Completion:
        future = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((messages, max_new_tokens, future))
        except asyncio.QueueFull:
            raise _APIError(429, "the generation queue is full: retry later", "rate_limit_exceeded") from None
        done = await future
        if on_text is not None:
            on_text(done.text)  # eager batches end together: the text comes in one piece
        return done

    async def candidates(self, messages: list[dict[str, str]], max_new_tokens: int, n: int, sampling: Any):
        """`n` candidates for one chat (greedy first), generated in the generation thread outside the batcher."""
        from text2sql.generate import generate_candidates

        def run():
            found = generate_candidates(self.gen, [messages], n, sampling, max_new_tokens)[0]
            tok = self.gen.tokenizer
            new = sum(len(tok(c.raw, add_special_tokens=False)["input_ids"]) for c in found)
            return _Completion(found[0].raw, self.gen.stats["prompt_tokens"][0] * n, new, 1), found

        return await asyncio.get_running_loop().run_in_executor(self._thread, run)

    async def _batches(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            batch = [item for item in batch if not item[2].done()]  # callers that went away
            # Requests asking for fewer new tokens are not held up generating the others' longer replies.
            for limit in sorted({item[1] for item in batch}):
                group = [item for item in batch if item[1] == limit]
                try:
                    done = await loop.run_in_executor(self._thread, self._generate, [g[0] for g in group], limit)
                except Exception as exc:  # the model failed on this batch: its requests fail, the server goes on
                    log.exception("generation failed", extra={"fields": {"batch": len(group)}})
                    failure = _APIError(500, f"generation failed: {type(exc).__name__}: {exc}", "generation_failed")
                    done = [failure] * len(group)
                for (_, _, future), result in zip(group, done):
                    if future.done():
                        continue
                    if isinstance(result, Exception):
                        future.set_exception(result)
                    else:
                        future.set_result(result)

    def _generate(self, chats: list[list[dict[str, str]]], max_new_tokens: int) -> list[_Completion]:
        """Worker thread: one batch, plus token counts for `usage` (only this thread touches the model's tokenizer)."""
        from text2sql.generate import generate

        replies = generate(self.gen, chats, max_new_tokens)
        tok = self.gen.tokenizer
        prompt_tokens = self.gen.stats["prompt_tokens"]  # generate tokenized the prompts already
        return [_Completion(reply, n, len(tok(reply, add_special_tokens=False)["input_ids"]), len(chats))
                for reply, n in zip(replies, prompt_tokens)]

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        while self._queue is not None and not self._queue.empty():
            future = self._queue.get_nowait()[2]
            if not future.done():
                future.set_exception(_APIError(503, "the server is shutting down", "shutting_down"))
        await asyncio.to_thread(self._thread.shutdown, True)


class _UpstreamBackend:
    """An OpenAI-compatible engine (vLLM, TGI, another `text2sql serve`) that only generates."""

    kind = "upstream"

    def __init__(self, url: str, model: str, token: str, timeout_s: float, max_connections: int):
        self.base = re.sub(r"/v1/?$", "", url.rstrip("/"))
        self.engine_id, self.token, self.timeout_s, self.max_connections = model, token, timeout_s, max_connections
        self._client = None

    async def start(self) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self._client = httpx.AsyncClient(base_url=self.base, headers=headers, timeout=self.timeout_s,
                                         limits=httpx.Limits(max_connections=self.max_connections))

    async def candidates(self, messages: list[dict[str, str]], max_new_tokens: int, n: int, sampling: Any):
        """The greedy reply, then `n - 1` sampled ones (seeded per sample, in parallel), with their log-probabilities
        where the engine returns them (OpenAI `logprobs`)."""
        from text2sql.generate import Candidate, extract_sql

        first = await self.complete(messages, max_new_tokens, logprobs=True)
        rest = await asyncio.gather(*(self.complete(messages, max_new_tokens, sampling, sampling.seed + i, True)
                                      for i in range(n - 1)))
        done = [first, *rest]
        total = _Completion(first.text, sum(d.prompt_tokens for d in done), sum(d.completion_tokens for d in done))
        return total, [Candidate(d.text, extract_sql(d.text), d.logprob) for d in done]

    async def complete(self, messages: list[dict[str, str]], max_new_tokens: int, sampling: Any = None,
                       seed: int | None = None, logprobs: bool = False,
                       on_text: Callable[[str], None] | None = None) -> _Completion:
        if not self.engine_id:
            self.engine_id = await self._pick_model()
        payload = {"model": self.engine_id, "messages": messages, "max_tokens": max_new_tokens,
                   "temperature": 0, "stream": False}
        if sampling is not None:
            payload |= {"temperature": sampling.temperature, "top_p": sampling.top_p, "seed": seed}
        if logprobs:
            payload["logprobs"] = True
        response = await self._call("POST", "/v1/chat/completions", json=payload)
        try:
            body = response.json()
            text = body["choices"][0]["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError):
            raise _APIError(502, f"upstream {self.base} sent a reply without choices[0].message.content",
                            "upstream_error") from None
        usage = body.get("usage") or {}
        done = _Completion(text, int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))
        tokens = ((body["choices"][0].get("logprobs") or {}).get("content") or []) if logprobs else []
        if tokens and all(isinstance(t.get("logprob"), (int, float)) for t in tokens):
            done.logprob = float(sum(t["logprob"] for t in tokens))
        if on_text is not None:
            on_text(text)
        return done

    async def _pick_model(self) -> str:
        """The first model the engine lists that is not a text2sql pipeline (for vLLM: the one it serves)."""
        response = await self._call("GET", "/v1/models")
        try:
            models = [m for m in response.json()["data"] if m.get("owned_by") != MODEL_ID]
            return models[0]["id"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise _APIError(502, f"upstream {self.base}/v1/models lists no model: set serve.upstream_model",
                            "upstream_error") from None

    async def _call(self, method: str, path: str, **kwargs):
        import httpx

        try:
            response = await self._client.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise _APIError(504, f"upstream {self.base} did not answer in {self.timeout_s:g} s "
                                 "(serve.upstream_timeout_s)", "upstream_timeout") from None
        except httpx.HTTPError as exc:
            raise _APIError(502, f"upstream {self.base} unreachable: {type(exc).__name__}: {exc}",
                            "upstream_error") from None
        if response.status_code == 429:  # the engine is full: so are we, and the client should back off
            raise _APIError(429, "the upstream engine is busy: retry later", "rate_limit_exceeded")
        if response.status_code != 200:
            raise _APIError(502, f"upstream {self.base}{path} answered {response.status_code}: {response.text[:200]}",
                            "upstream_error")
        return response

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()


# ---------------------------------------------------------------- auth, limits and logs


class _Guard:
    """ASGI middleware run before any route: request id, bearer auth, body size, concurrency slots, one log line.

    A request holds a slot from its auth check until its response's last byte is handed to the server, so a
    client that sends its next request on receiving a reply never finds its own slot still taken.
    """

    def __init__(self, app, token: str, max_body_bytes: int, max_concurrency: int):
        self.app, self.token, self.max_body_bytes, self.max_concurrency = app, token, max_body_bytes, max_concurrency
        self.in_flight = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        given = headers.get("x-request-id", "")
        request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        status, holding = 500, False

        def release() -> None:
            nonlocal holding
            if holding:
                holding = False
                self.in_flight -= 1

        async def send_logged(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", request_id.encode())]}
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                release()
            await send(message)

        try:
            if scope["path"] not in OPEN_PATHS and not scope["path"].startswith("/static/"):
                if self.token and not _authorized(headers.get("authorization", ""), self.token):
                    return await _send_error(send_logged, 401, "missing or wrong bearer token", "invalid_api_key")
                length = headers.get("content-length", "")
                if length.isdigit() and int(length) > self.max_body_bytes:
                    return await _send_error(send_logged, 413, f"request body over {self.max_body_bytes} bytes "
                                                              "(serve.max_body_bytes)", "body_too_large")
                if self.in_flight >= self.max_concurrency:
                    return await _send_error(send_logged, 429, f"{self.max_concurrency} requests in flight "
                                             "(serve.max_concurrency): retry later", "rate_limit_exceeded")
                self.in_flight += 1
                holding = True
                if scope["method"] in ("POST", "PUT", "PATCH"):
                    try:
                        body = await asyncio.wait_for(_read_body(receive, self.max_body_bytes), BODY_TIMEOUT_S)
                    except asyncio.TimeoutError:
                        return await _send_error(send_logged, 408, f"request body not received in {BODY_TIMEOUT_S:g} s",
                                                 "timeout")
                    if body is None:
                        return await _send_error(send_logged, 413, f"request body over {self.max_body_bytes} bytes "
                                                                  "(serve.max_body_bytes)", "body_too_large")
                    if not await _until_disconnect(self.app(scope, _replay(body, receive), send_logged), receive):
                        raise _Disconnected
                    return
            await self.app(scope, receive, send_logged)
        except _Disconnected:
            if status == 500:  # nothing sent yet: the client went away first (nginx's code for it)
                status = 499
        finally:
            release()
            fields = {"request_id": request_id, "method": scope["method"], "path": scope["path"], "status": status,
                      "latency_ms": round((time.perf_counter() - started) * 1000, 1)}
            log.info("request", extra={"fields": fields | (state.get("log") or {})})


class _Disconnected(Exception):
    pass


async def _read_body(receive, limit: int) -> bytes | None:
    """The whole body, or None once it passes `limit` bytes (chunked uploads have no Content-Length to check)."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


async def _until_disconnect(app_call, receive) -> bool:
    """Run the app; cancel it if the client disconnects first (an abandoned question must not keep its slot and
    its place in a generation batch). True when the app finished."""
    app_task = asyncio.ensure_future(app_call)

    async def disconnected():
        while (await receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({app_task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not app_task.done():
            app_task.cancel()
            await asyncio.gather(app_task, return_exceptions=True)
    if app_task.cancelled():
        return False
    app_task.result()  # re-raise what the app raised
    return True


def _replay(body: bytes, receive):
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # then the real channel: a streaming response listens on it for a disconnect

    return replay


def _authorized(header: str, token: str) -> bool:
    scheme, _, given = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


async def _send_error(send, status: int, message: str, code: str) -> None:
    response = _error_response(status, message, code)
    await send({"type": "http.response.start", "status": status, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


class _JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
                 "level": record.levelname.lower(), "event": record.getMessage(), **getattr(record, "fields", {})}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)
