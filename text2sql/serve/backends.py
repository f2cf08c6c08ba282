"""The server's generators: a local transformers model behind an eager batcher, or an upstream engine.

`generate.decoding: static` uses `engine_backend.EngineBackend` instead of `_LocalBackend`; all three have the same
interface (`start`, `complete`, `candidates`, `close`, `kind`, `engine_id`).
"""

import asyncio
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from text2sql.generate import Candidate, extract_sql, generate, generate_candidates
from text2sql.serve.openai import MODEL_ID, _APIError
from text2sql.serve.pipeline import _Completion

log = logging.getLogger("text2sql.serve")


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
        if not self.engine_id:  # known from the start, a client naming it gets the engine before any completion
            try:
                self.engine_id = await self._pick_model(timeout=5.0)
            except _APIError:
                pass  # not up yet: asked again at the first completion

    async def candidates(self, messages: list[dict[str, str]], max_new_tokens: int, n: int, sampling: Any):
        """The greedy reply, then `n - 1` sampled ones (seeded per sample, in parallel), with their log-probabilities
        where the engine returns them (OpenAI `logprobs`)."""
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

    async def _pick_model(self, **kwargs) -> str:
        """The first model the engine lists that is not a text2sql pipeline (for vLLM: the one it serves)."""
        response = await self._call("GET", "/v1/models", **kwargs)
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
