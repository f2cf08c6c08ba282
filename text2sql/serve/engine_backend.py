"""The server's local backend for `generate.decoding: static`: `text2sql.engine` in its own thread.

Requests are encoded in one tokenizer thread, then submitted to the engine, which admits them into the running
decode batch at its next step (no waiting for a batch to finish) and calls back per token: the text so far goes
to the request's `on_text` (streaming), the finished samples resolve its future. Self-correction attempts go
through the same engine; candidates (`generate.num_candidates`) are generated on its thread, between steps.
"""

from __future__ import annotations

import asyncio
import copy
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

from text2sql.engine import Request
from text2sql.generate import decode_engine, encode_chats, generate_candidates
from text2sql.serve.openai import _APIError
from text2sql.serve.pipeline import _Completion

ENGINE_SWITCH_INTERVAL_S = 0.001
"""The interpreter's thread switch interval while the engine serves (Python's default: 5 ms). Every torch call
releases the GIL, and taking it back waits up to the interval while another thread runs Python (prompt building,
sqlglot): `bench/gil_contention.py` measured a decode step 241x slower beside a thread running `check_sql` at 5 ms,
46x at 1 ms (2 CPU cores, tiny model). The pipeline keeps sqlglot off this process where it can (`judge_and_run`)."""


class EngineBackend:
    """Continuous batching over a static KV cache; same interface as serve's other backends."""

    kind = "local"

    def __init__(self, gen: Any, max_batch_size: int, queue_size: int, torch_threads: int):
        self.gen, self.queue_size, self.torch_threads = gen, queue_size, torch_threads
        self.engine = decode_engine(gen, max_batch_size)
        self.engine_id = Path(gen.model_dir).name if gen.model_dir else "model"
        # Prompts are encoded off the event loop, with a tokenizer of their own (tokenizers#537: one Rust
        # tokenizer used from two threads raises "Already borrowed"); the engine thread decodes with the model's.
        self._encoder = ThreadPoolExecutor(1, thread_name_prefix="text2sql-encode")
        self._encoding = SimpleNamespace(tokenizer=copy.deepcopy(gen.tokenizer), prefix_cache=gen.prefix_cache)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pending = 0
        self._switch_interval = sys.getswitchinterval()

    async def start(self) -> None:
        sys.setswitchinterval(ENGINE_SWITCH_INTERVAL_S)  # process-wide: the server owns its process
        self._thread = threading.Thread(target=self._serve, name="text2sql-engine", daemon=True)
        self._thread.start()

    async def warm(self, messages: list[dict[str, str]], max_new_tokens: int) -> None:
        """Prefill the schema prefix, size the cache and (on CUDA) compile every batch bucket before serving."""
        (ids,), (shared,) = encode_chats(self._encoding, [messages])
        # On the engine thread, which owns the model; no request comes before the server has started.
        await asyncio.wrap_future(self.engine.submit_call(lambda: self.engine.warm(ids, shared, max_new_tokens)))

    def _serve(self) -> None:
        import torch

        torch.set_num_threads(self.torch_threads or max(1, (os.cpu_count() or 2) - 1))
        self.engine.serve_forever(self._stop)

    async def complete(self, messages: list[dict[str, str]], max_new_tokens: int,
                       on_text: Callable[[str], None] | None = None, n: int = 1, temperature: float = 0.0):
        if self._pending >= self.queue_size:
            raise _APIError(429, "the generation queue is full: retry later", "rate_limit_exceeded")
        self._pending += 1
        loop = asyncio.get_running_loop()
        try:
            (ids,), (shared,) = await loop.run_in_executor(self._encoder, encode_chats, self._encoding, [messages])
            future = loop.create_future()
            tok, sent = self.gen.tokenizer, [0]

            def on_tokens(request: Request, i: int) -> None:  # engine thread
                if i or on_text is None:
                    return
                text = tok.decode(request.outputs[0], skip_special_tokens=True, clean_up_tokenization_spaces=False)
                if text.endswith("\ufffd"):  # a character split across tokens: wait for the rest
                    return
                if len(text) > sent[0]:
                    loop.call_soon_threadsafe(on_text, text[sent[0]:])
                    sent[0] = len(text)

            def on_done(request: Request) -> None:  # engine thread
                if request.error is not None:
                    failure = _APIError(500, f"generation failed: {type(request.error).__name__}: {request.error}",
                                        "generation_failed")
                    loop.call_soon_threadsafe(_settle, future, failure)
                    return
                texts = [tok.decode(o, skip_special_tokens=True, clean_up_tokenization_spaces=False)
                         for o in request.outputs]
                if on_text is not None and len(texts[0]) > sent[0]:
                    loop.call_soon_threadsafe(on_text, texts[0][sent[0]:])
                done = _Completion(texts[0], len(ids), len(request.outputs[0]), request.batch or 1)
                loop.call_soon_threadsafe(_settle, future, done)

            request = Request(ids, max_new_tokens, n=n, temperature=temperature, shared=shared,
                              on_tokens=on_tokens, on_done=on_done)
            self.engine.submit(request)
            try:
                return await future
            finally:
                request.cancelled = True  # a caller that went away frees its slot at the next step
        finally:
            self._pending -= 1

    async def candidates(self, messages: list[dict[str, str]], max_new_tokens: int, n: int, sampling: Any):
        """`n` candidates for one chat (greedy first, then seeded samples with their log-probabilities), generated on
        the engine's thread between decode steps by `generate_candidates` (its eager sampling path)."""
        def run():
            found = generate_candidates(self.gen, [messages], n, sampling, max_new_tokens)[0]
            tok = self.gen.tokenizer
            new = sum(len(tok(c.raw, add_special_tokens=False)["input_ids"]) for c in found)
            return _Completion(found[0].raw, self.gen.stats["prompt_tokens"][0] * n, new, 1), found

        return await asyncio.wrap_future(self.engine.submit_call(run))

    def stats(self) -> dict[str, Any]:
        """Where the engine's time went (the shutdown log line; `bench/serve_load.py` reports it)."""
        spent = {key: round(value, 3) for key, value in self.engine.account().items()}
        ms_per_step = round(1000 * self.engine.decode_seconds / spent["steps"], 3) if spent["steps"] else None
        ms_per_prefill = round(1000 * self.engine.prefill_seconds / spent["prefills"], 3) if spent["prefills"] else None
        return spent | {"ms_per_step": ms_per_step, "ms_per_prefill": ms_per_prefill, "shapes": len(self.engine.shapes)}

    async def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 30)
        self.engine.fail_all(RuntimeError("the server is shutting down"))
        await asyncio.to_thread(self._encoder.shutdown, True)
        sys.setswitchinterval(self._switch_interval)


def _settle(future: asyncio.Future, result: Any) -> None:
    if future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)
