"""The OpenAI-compatible side of the server: request shapes, chat completions, SSE streaming and API errors."""

import asyncio
import json
import time
import uuid
from typing import Any

# pydantic comes with pyiceberg (a core dependency); fastapi is imported only when serving.
from pydantic import BaseModel, ConfigDict, Field

MODEL_ID = "text2sql"
"""The pipeline's model id in /v1/models and chat completions: question -> checked SQL."""
ENGINE_OWNER = "text2sql-engine"
"""`owned_by` of the raw engine entry in /v1/models (the pipeline's is `text2sql`)."""


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
