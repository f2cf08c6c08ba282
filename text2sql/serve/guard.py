"""The ASGI middleware in front of every route: request id, bearer auth, body limit, concurrency, disconnects."""

import asyncio
import hmac
import logging
import re
import time
import uuid

from text2sql.serve.openai import _error_response

OPEN_PATHS = frozenset({"/healthz", "/", "/favicon.ico"})
"""Paths served without the token (also everything under /static/: the page asks for the token itself)."""
BODY_TIMEOUT_S = 30.0
"""A client that takes longer to send its body gets 408 (and frees its slot)."""
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")

log = logging.getLogger("text2sql.serve")


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
