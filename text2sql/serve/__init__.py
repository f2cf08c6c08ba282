"""The HTTP server a BI chatbot talks to: question in, checked SQL (and its rows) out.

    text2sql serve --model DIR [--model DIR ...] [--host 127.0.0.1] [--port 8000] [--upstream URL ...]

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

Each question takes these steps, in `pipeline._Pipeline.answer`: the prompt from schemas/ through `prompt.PromptBuilder`
with the model's own prompt settings (exactly as `predict` builds it) -> the backend -> `warehouse.judge_reply`
(the reply judged whole, as eval judges it) -> when asked, the sandboxed `QueryRunner` -> on an error,
`serve.retries` more attempts with the error added as a user turn (`correction_messages`).

Backends: a local transformers model, either with `generate.decoding: static` (`serve.engine_backend`: requests
join the running decode batch at its next step, up to `serve.max_batch_size` slots, tokens streamed as they come)
or eager, where an asyncio batcher gathers the requests that arrive while a batch runs into the next one (up to
`serve.max_batch_size`, generation in one worker thread, a bounded queue); or `--upstream URL`, any OpenAI-compatible engine, which gets the rendered messages and only generates.

Ensemble: `--model A --model B ...` (or `--upstream` repeated) loads every model, each with its own backend and its
own prompt settings; every member answers the first attempt at once, the reply whose result most replies share
wins (`select.select_candidate`, a tie to the earliest member), and the retries go to the member that won. `/v1/sql`
then carries `ensemble: {member, votes, members}`.

Operation: bearer-token auth, request body limit (413), question length limit (422), at most
`serve.max_concurrency` requests in flight (429 past that, never a wait), one JSON log line per request
(never the token or the question), graceful shutdown (uvicorn drains connections, then the batcher and
the query workers close).

The package, one module per part: `app` (create_app, the routes, run, the JSON log), `openai` (request shapes,
OpenAI-compatible replies and SSE streaming, API errors), `pipeline` (question -> checked SQL, self-correction,
candidates), `backends` (the eager local batcher, an upstream engine), `engine_backend` (static decoding),
`guard` (ASGI auth, limits, disconnects). The names below are the ones used outside the package (tests included).
"""

from text2sql.serve.app import (SHUTDOWN_GRACE_S, STATIC_DIR, WARMUP_QUESTION, _check_address, _json_body,
                                _JSONFormatter, configure_logging, create_app, log, run)
from text2sql.serve.backends import _LocalBackend, _UpstreamBackend
from text2sql.serve.guard import (BODY_TIMEOUT_S, OPEN_PATHS, _authorized, _Disconnected, _Guard, _read_body,
                                  _replay, _send_error, _until_disconnect)
from text2sql.serve.openai import (ENGINE_OWNER, MODEL_ID, ChatMessage, ChatRequest, SQLRequest, _APIError,
                                   _chat_completion, _check_question, _error_response, _sse, _streamed_chat, _text)
from text2sql.prompt import RETRY_PROMPT, correction_messages
from text2sql.serve.pipeline import _Answer, _Completion, _json_value, _Pipeline, _prompt_settings_only

__all__ = [  # every name used outside the package, the tests' private ones included
    "BODY_TIMEOUT_S", "ENGINE_OWNER", "MODEL_ID", "OPEN_PATHS", "RETRY_PROMPT", "SHUTDOWN_GRACE_S", "STATIC_DIR",
    "WARMUP_QUESTION", "ChatMessage", "ChatRequest", "SQLRequest", "configure_logging", "correction_messages",
    "create_app", "log", "run", "_APIError", "_Answer", "_Completion", "_Disconnected", "_Guard", "_JSONFormatter",
    "_LocalBackend", "_Pipeline", "_UpstreamBackend", "_authorized", "_chat_completion", "_check_address",
    "_check_question", "_error_response", "_json_body", "_json_value", "_prompt_settings_only", "_read_body",
    "_replay", "_send_error", "_sse", "_streamed_chat", "_text", "_until_disconnect",
]
