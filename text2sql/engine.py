"""Static-cache decoding with per-step admission: the fast path of `generate` and the local server.

One preallocated KV cache (transformers' `StaticCache`) holds `max_batch_size` slots of `cache_tokens` columns.
Waiting requests are prefilled together in one eager forward, from the longest kept KV prefix they all start
with (the instructions and schema every question shares), their KV copied into free slots, and they join the
running decode batch at the next step; a finished sequence frees its slot at once. Every step decodes one
token for the occupied slots (rounded up to a power of two, so a lone request does not pay for sixteen), with
the same forward call each time: fixed shapes, cache written in place. On CUDA that step is
`torch.compile(mode="reduce-overhead")`, i.e. captured in a CUDA graph per batch bucket and replayed, which
removes the per-token host overhead of `generate`. There a model with grouped key/value heads attends through
`text2sql.attention.packed_sdpa` (`PACKED_GQA`), which reads each key/value head once where compiled sdpa copies
them per query head.

Layout: all slots write their next token at the same column `t` (the cache's `cumulative_length`), so a
slot's tokens end at `t`; each slot's own positions go in `position_ids` and its valid columns in a 4-D
additive attention mask. When `t` reaches the end, the columns are shifted left past the oldest slot's
start; a prompt longer than `t` shifts them right. Greedy replies equal `generate`'s (tests/test_generate.py).
"""

from __future__ import annotations

import copy
import os
import queue
import threading
import time
from concurrent.futures import Future
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Callable

from text2sql.attention import use_packed_attention
from text2sql.errors import ModelError

MIN_CACHED_PREFIX = 32
"""Shorter shared prefixes are prefilled with the rest: a cache copy would cost more than it saves."""
PREFIX_CACHES = 8
"""Prefix caches kept: with a pruned schema each set of tables makes its own system message."""
PREFILL_ROWS = 32
"""Most requests prefilled together in one forward (their KV, the kept prefix repeated per row, is held twice)."""
ADMIT_FRACTION = 4
"""While the batch decodes, waiting requests are admitted once 1/ADMIT_FRACTION of the slots are free (or all they
need): one prefill per freed slot would cost more than the steps it fills."""

CACHE_TOKENS_STEP = 256
"""The cache length is rounded up to a multiple of this: each length is one more compiled shape."""
WARM_CACHE_FACTOR = 1.5
"""`warm` sizes the cache with this margin over its prompt: questions shown more definitions, and a
self-correction turn (the failed reply and the error added), would otherwise grow it while serving, and each new
length compiles its steps again (a 35.6 s request on the H200)."""
WARMUP_CALLS = 3
"""Calls per shape before serving: compile, then CUDA-graph warm-up and recording (torch's cudagraph trees)."""


PACKED_GQA = {"1": True, "0": False}.get(os.environ.get("T2S_PACKED_GQA", ""))
"""Whether engines built from now on attend with `text2sql.attention.packed_sdpa` (`T2S_PACKED_GQA=1`/`0`); None (the
default) = when the step is compiled. On the H200, Qwen2.5-Coder-1.5B, `predict` on the 132 test questions at batch 64
decoded 19.6 questions/s against 12.0 with transformers' sdpa (key/value heads repeated), EX within the 80-82 of 132
that reruns of either give (eval/reports/v0.15-release-train-dev). Uncompiled, transformers does not repeat them."""
DYNAMIC_SHAPES = os.environ.get("T2S_DYNAMIC_SHAPES", "0") == "1"
"""Whether compiled engines built from now on compile their step with symbolic sizes (`T2S_DYNAMIC_SHAPES=1`): one
compile serves every batch bucket above 1 and every cache length, where static sizes compile each (bucket, length)
anew, ~25-40 s apiece for Qwen2.5-1.5B on the H200 (v0.14). CUDA graphs are still recorded per shape. Opt-in: in
v0.15 its steps decoded as fast as static ones there, but its one compile took 68-75 s cold, where `predict`, which
decodes one shape, compiled in 10-34 s with static sizes; the server, which warms every bucket, is where it pays."""


@dataclass(eq=False)
class Request:
    """One prompt to decode, `n` samples of it (greedy when `temperature` is 0; the samples share the prefill)."""

    prompt: list[int]
    max_new_tokens: int
    n: int = 1
    temperature: float = 0.0
    shared: int = 0
    """Leading prompt tokens other prompts share (instructions, schema: `text2sql.prompt.shared_system_head`):
    prefilled once and kept; 0 keeps nothing."""
    on_tokens: Callable[[Request, int], None] | None = None
    """Called in the engine's thread after each step that gave sample i a token."""
    on_done: Callable[[Request], None] | None = None
    """Called in the engine's thread once every sample has finished (or the request failed)."""
    outputs: list[list[int]] = field(default_factory=list)
    """Generated token ids per sample, end-of-sequence token excluded."""
    error: BaseException | None = None
    batch: int = 0
    """The most slots decoded together in a step while this request was in the batch."""
    cancelled: bool = False
    """Set by the caller to drop the request: its slots are freed at the next step."""
    _open: int = 0


class DecodeEngine:
    """Slots of a static KV cache, decoded one token per `step()` for every occupied slot.

    Use `run(requests)` to decode a list to the end in the calling thread, or `submit` from any thread while
    one thread calls `serve_forever`.
    """

    def __init__(self, model: Any, eos_token_id: int | list[int] | None, max_batch_size: int, compile: bool,
                 prefixes: OrderedDict | None = None):
        import torch

        self.model = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.outer = model
        eos = eos_token_id if isinstance(eos_token_id, (list, tuple)) else [eos_token_id]
        self.eos = {int(e) for e in eos if e is not None}
        self.max_batch_size, self.compile = max_batch_size, compile
        self.prefixes = prefixes if prefixes is not None else OrderedDict()
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.buckets = [1 << i for i in range(max_batch_size.bit_length()) if 1 << i < max_batch_size] + [max_batch_size]
        self.cache_tokens = 0
        self.t = 0  # the column every slot writes its next token at
        self.slots: list[tuple[Request, int] | None] = [None] * max_batch_size
        self.starts = [0] * max_batch_size  # first column of each slot's tokens
        self.temperatures: list[float] = [0.0] * max_batch_size
        self.steps = self.shifts = self.prefills = 0
        self.decode_seconds = self.prefill_seconds = 0.0  # wall time in steps and in prefills, warm-up excluded
        # Of the prefills: tokens computed and tokens read from a kept prefix (per row), and the forwards' time
        # (v0.16, 16 clients on the H200: 526 prefills took 36.8 s, two thirds of the run; these say whether the
        # forward's work or what surrounds it).
        self.prefill_tokens = self.prefill_cached_tokens = 0
        self.prefill_forward_seconds = 0.0
        self.shapes: set[tuple[int, int]] = set()  # (batch bucket, cache length) decoded: one compiled step each
        self.warmed: set[tuple[int, int]] = set()  # shapes compiled and recorded (by `warm` or `run`)
        self.warmup_seconds = 0.0
        """Time spent compiling and recording steps (a process's first call per shape), so callers can say what
        decoding itself costs."""
        self.one_shape = compile  # `run` decodes one bucket throughout (see there)
        self._floor = 1
        self._incoming: queue.Queue[Request] = queue.Queue()
        self._waiting: deque[Request] = deque()
        self._argument = _cache_argument(self.model)
        self._generator = torch.Generator(self.device).manual_seed(0)
        self._forward = self.model.__call__
        self.dynamic = compile and DYNAMIC_SHAPES
        if compile:
            # Each batch bucket and cache length is one graph; allow them all without dynamo giving up.
            torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
            self._forward = torch.compile(self.model.__call__, mode="reduce-overhead", fullgraph=False,
                                          dynamic=None if self.dynamic else False)
        use_packed_attention(self.model, compile if PACKED_GQA is None else PACKED_GQA)
        self._check_layers()

    # ------------------------------------------------------------ the caller's side

    def submit(self, request: Request) -> None:
        """Queue a request (any thread); it joins the decode batch at the engine's next step."""
        request.outputs = [[] for _ in range(request.n)]
        request._open = request.n
        self._incoming.put(request)

    def submit_call(self, fn: Callable[[], Any]) -> Future:
        """Run `fn` on the engine's thread (which owns the model) between steps; its result comes in the future."""
        future: Future = Future()
        self._incoming.put(_Call(fn, future))
        return future

    def run(self, requests: list[Request]) -> None:
        """Decode `requests` to the end in this thread (predict/eval).

        The cache is sized for the longest request before the first step, and with `one_shape` (on when compiled)
        every step decodes the batch bucket that holds all the requests, also while the batch drains: a fresh
        process then compiles one step, not one per cache length and bucket it meets (each costs seconds, a
        drained step at the full bucket about a millisecond more)."""
        if requests:
            self._reserve(max(len(r.prompt) + r.max_new_tokens for r in requests))
        wanted = min(sum(max(r.n, 1) for r in requests), self.max_batch_size)
        floor = next(b for b in self.buckets if b >= wanted) if self.one_shape and requests else 1
        if self.compile and requests and self.idle():
            self._warm_steps([floor])
        saved, self._floor = self._floor, floor
        try:
            for request in requests:
                self.submit(request)
            while self.step():
                pass
        finally:
            self._floor = saved
        failed = next((r.error for r in requests if r.error is not None), None)
        if failed is not None:
            raise failed

    def serve_forever(self, stop: threading.Event) -> None:
        """Step while there is work, wait for requests when there is none, until `stop` is set. A failed step
        fails the requests it held and the engine goes on."""
        while not stop.is_set():
            if self.idle():
                try:
                    self._take(self._incoming.get(timeout=0.1))
                except queue.Empty:
                    pass
                continue
            try:
                self.step()
            except Exception as exc:  # the model failed: its requests get the error, the next ones a fresh cache
                self.fail_all(exc)

    def _take(self, item: Request | _Call) -> None:
        if isinstance(item, _Call):
            item.run()
        else:
            self._waiting.append(item)

    def account(self) -> dict[str, float]:
        """Where the engine's time went so far: steps and prefills, and seconds decoding, prefilling and warming up."""
        return {"steps": self.steps, "prefills": self.prefills, "decode_s": self.decode_seconds,
                "prefill_s": self.prefill_seconds, "prefill_forward_s": self.prefill_forward_seconds,
                "prefill_tokens": self.prefill_tokens, "prefill_cached_tokens": self.prefill_cached_tokens,
                "warmup_s": self.warmup_seconds}

    def idle(self) -> bool:
        return not self._waiting and self._incoming.empty() and all(s is None for s in self.slots)

    def fail_all(self, exc: BaseException) -> None:
        """End every request held or waiting with `exc`."""
        held = {id(s[0]): s[0] for s in self.slots if s is not None}
        while not self._incoming.empty():
            self._take(self._incoming.get_nowait())
        held |= {id(r): r for r in self._waiting}
        self._waiting.clear()
        self.slots = [None] * self.max_batch_size
        for request in held.values():
            request.error = exc
            request._open = 0
            if request.on_done:
                request.on_done(request)

    def warm(self, prompt: list[int], shared: int, max_new_tokens: int) -> None:
        """Size the cache for prompts up to WARM_CACHE_FACTOR times this long, keep the prompt's shared prefix, and
        (compiled) record every batch bucket's step, so no user waits for it."""
        self._reserve(int(WARM_CACHE_FACTOR * (len(prompt) + max_new_tokens)))
        self.run([Request(prompt, 1, shared=shared)])
        self._warm_steps(self.buckets)

    def _warm_steps(self, buckets: list[int]) -> None:
        """Compile and record the step of each bucket at the current cache length (engine idle), timed."""
        import torch

        todo = [b for b in buckets if (b, self.cache_tokens) not in self.warmed]
        if not todo:
            return
        started = time.perf_counter()
        self._set_t(0)  # no slot is in use: the warm-up steps write where nothing is read
        for batch in todo:
            for _ in range(WARMUP_CALLS):
                self._decode(batch)
            self.warmed.add((batch, self.cache_tokens))
        self._mask.fill_(self._masked)
        self._set_t(0)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.warmup_seconds += time.perf_counter() - started

    # ------------------------------------------------------------ one step

    def step(self) -> bool:
        """Admit what waits (while slots are free), decode one token for every occupied slot. False once idle."""
        while not self._incoming.empty():
            self._take(self._incoming.get_nowait())
        self._admit()
        occupied = [s for s, held in enumerate(self.slots) if held is not None]
        if not occupied:
            return bool(self._waiting)
        if self.t >= self.cache_tokens:
            self._shift(-min(self.starts[s] for s in occupied))
        batch = next(b for b in self.buckets if b > occupied[-1] and b >= self._floor)
        started = time.perf_counter()
        tokens = self._decode(batch).tolist()  # waits for the device
        self.decode_seconds += time.perf_counter() - started
        self.steps += 1
        self.shapes.add((batch, self.cache_tokens))
        for s in occupied:
            request = self.slots[s][0]
            request.batch = max(request.batch, len(occupied))
        for s in occupied:
            self._emit(s, tokens[s])
        return True

    def _decode(self, batch: int):
        import torch

        self._mask[:, :, :, self.t] = 0  # the column this step writes, for every row
        if self.compile:
            torch.compiler.cudagraph_mark_step_begin()
        inputs = {"input_ids": self._next[:batch, None], "position_ids": self._positions[:batch, None],
                  "attention_mask": self._mask[:batch]}
        if self.dynamic:  # the slices are new tensors each step: mark them each step
            for name, tensor in inputs.items():
                _symbolic(tensor, batch, length_dim=3 if name == "attention_mask" else None)
        with torch.inference_mode():
            logits = self._forward(**inputs, use_cache=True, **{self._argument: self._caches[batch]}).logits[:, -1]
            chosen = self._pick(logits, batch)
            self._next[:batch] = chosen
            self._positions[:batch] += 1
        self.t += 1
        return chosen

    def _pick(self, logits, batch: int):
        import torch

        greedy = logits.argmax(-1)
        if not any(self.temperatures[:batch]):
            return greedy
        temps = torch.tensor(self.temperatures[:batch], device=logits.device)
        probs = torch.softmax(logits.float() / temps.clamp(min=1e-5)[:, None], -1)
        sampled = torch.multinomial(probs, 1, generator=self._generator)[:, 0]
        return torch.where(temps > 0, sampled, greedy)

    def _first_token(self, logits, temperature: float) -> int:
        import torch

        if not temperature:
            return int(logits.argmax(-1)[0])
        probs = torch.softmax(logits.float() / temperature, -1)
        return int(torch.multinomial(probs, 1, generator=self._generator)[0, 0])

    def _emit(self, slot: int, token: int) -> None:
        request, i = self.slots[slot]
        if request.cancelled:
            self._finish(slot, request)
            return
        done = token in self.eos
        if not done:
            request.outputs[i].append(token)
            if request.on_tokens:
                request.on_tokens(request, i)
        if done or len(request.outputs[i]) >= request.max_new_tokens:
            self._finish(slot, request)

    def _finish(self, slot: int | None, request: Request) -> None:
        if slot is not None:
            self.slots[slot] = None
            self.temperatures[slot] = 0.0
        request._open -= 1
        if request._open == 0 and request.on_done:
            request.on_done(request)

    # ------------------------------------------------------------ admission

    def _admit(self) -> None:
        """Prefill waiting requests into free slots, several in one forward."""
        import torch

        while self._waiting:
            request = self._waiting[0]
            if request.cancelled:
                self._waiting.popleft()
                request._open = 0
                if request.on_done:
                    request.on_done(request)
                continue
            free = [s for s, held in enumerate(self.slots) if held is None]
            if len(free) < min(request.n, self.max_batch_size) or self._defer(len(free)):
                return
            length = len(request.prompt)
            if request.n > self.max_batch_size or request.max_new_tokens < 1 or not length:
                self._waiting.popleft()
                request.error = ModelError(f"cannot decode {request.n} samples of a {length}-token prompt with "
                                           f"{self.max_batch_size} slots and {request.max_new_tokens} new tokens")
                request._open = 1
                self._finish(None, request)
                continue
            group = self._group(len(free))
            self._reserve(max(len(r.prompt) + r.max_new_tokens for r in group))
            started = time.perf_counter()
            with torch.inference_mode():
                rows, logits = self._prefill(group)
                self.prefills += 1
                longest = max(len(r.prompt) for r in group)
                if self.t < longest:
                    self._shift(longest - self.t)
                for r, (row, kv) in enumerate(zip(group, rows)):
                    for i in range(row.n):
                        slot = free.pop(0)
                        self.temperatures[slot] = row.temperature
                        first = self._first_token(logits[r:r + 1], row.temperature)
                        self._place(slot, kv, len(row.prompt), first)
                        self.slots[slot] = (row, i)
                        self._emit(slot, first)  # may finish at once (end of sequence, max_new_tokens 1)
            self.prefill_seconds += time.perf_counter() - started  # the first tokens were read: the device is done

    def _defer(self, free: int) -> bool:
        """Wait for more free slots while the batch decodes: a prefill per freed slot would cost more than the
        steps it fills. Admit at once when nothing decodes, or when all that waits fits."""
        if free == self.max_batch_size:
            return False
        demand = sum(r.n for r in self._waiting if not r.cancelled)
        return free < min(demand, max(1, self.max_batch_size // ADMIT_FRACTION))

    def _group(self, free: int) -> list[Request]:
        """Pop the next request and those right behind it, as many as fit the free slots and PREFILL_ROWS."""
        group = [self._waiting.popleft()]
        slots = group[0].n
        while self._waiting and len(group) < PREFILL_ROWS:
            nxt = self._waiting[0]
            if nxt.cancelled or slots + nxt.n > free or nxt.max_new_tokens < 1 or not nxt.prompt:
                break
            group.append(self._waiting.popleft())
            slots += nxt.n
        return group

    def _prefill(self, group: list[Request]):
        """Each request's KV per layer (keys, values: heads x length x dim) and its last logits, in one forward.

        The longest kept prefix every prompt starts with is not computed again. The rest of each prompt is
        left-padded, so every last token sits in the last column; pad columns are masked, then dropped from each
        KV. The prefix the group shares, at most its `shared` tokens, is kept for the requests that follow.
        """
        import torch
        from transformers import DynamicCache

        prompts = [r.prompt for r in group]
        done = max((len(p) for p in self.prefixes if all(len(q) > len(p) and tuple(q[:len(p)]) == p for q in prompts)),
                   default=0)
        cache = DynamicCache()
        if done:
            prefix = tuple(prompts[0][:done])
            self.prefixes.move_to_end(prefix)
            cache = copy.deepcopy(self.prefixes[prefix])
            if len(group) > 1:
                cache.batch_repeat_interleave(len(group))
        rests = [p[done:] for p in prompts]
        width = max(len(rest) for rest in rests)
        pads = [width - len(rest) for rest in rests]
        pad_id = next(iter(self.eos), 0)
        kwargs: dict[str, Any] = {}
        if any(pads):
            kwargs["attention_mask"] = torch.tensor([[1] * done + [0] * p + [1] * len(rest)
                                                     for p, rest in zip(pads, rests)], device=self.device)
            kwargs["position_ids"] = torch.tensor([[done + max(0, j - p) for j in range(width)] for p in pads],
                                                  device=self.device)
        ids = torch.tensor([[pad_id] * p + rest for p, rest in zip(pads, rests)], device=self.device)
        started = time.perf_counter()
        out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1, **{self._argument: cache}, **kwargs)
        if ids.is_cuda:
            torch.cuda.synchronize(ids.device)  # the first tokens are read right after: this wait is paid anyway
        self.prefill_forward_seconds += time.perf_counter() - started
        self.prefill_tokens += sum(len(rest) for rest in rests)
        self.prefill_cached_tokens += done * len(group)
        rows = [[(torch.cat([layer.keys[r, :, :done], layer.keys[r, :, done + p:]], dim=1),
                  torch.cat([layer.values[r, :, :done], layer.values[r, :, done + p:]], dim=1))
                 for layer in cache.layers] for r, p in enumerate(pads)]
        # What the group shares, up to what every question shares: a longer common prefix (two questions shown
        # the same first definitions) would be kept where no later question finds it.
        shared = min(r.shared for r in group)
        if len(group) > 1:
            shared = min(shared, common_prefix_len(prompts))
        if MIN_CACHED_PREFIX <= shared and done < shared < min(len(p) for p in prompts):
            self._keep_prefix(tuple(prompts[0][:shared]), cache, pads.index(0))
        return rows, out.logits[:, -1]

    def _keep_prefix(self, prefix: tuple[int, ...], cache, row: int) -> None:
        """Keep the first len(prefix) columns of `row` (an unpadded one) of this prefill's cache."""
        kept = copy.copy(cache)
        kept.layers = [copy.copy(layer) for layer in cache.layers]
        for layer in kept.layers:  # copies: a view would hold (and deepcopy) the whole batch's cache
            layer.keys = layer.keys[row:row + 1, :, :len(prefix)].clone()
            layer.values = layer.values[row:row + 1, :, :len(prefix)].clone()
        self.prefixes[prefix] = kept
        while len(self.prefixes) > PREFIX_CACHES:
            self.prefixes.popitem(last=False)

    def _place(self, slot: int, kv: list, length: int, first: int) -> None:
        """Copy a prefilled prompt's KV (per layer: keys, values) into `slot`, ending at column t, and set the slot's
        mask and next input."""
        start = self.t - length
        for layer, (keys, values) in zip(self._layers, kv):
            layer.keys[slot, :, start:self.t] = keys
            layer.values[slot, :, start:self.t] = values
        self._mask[slot].fill_(self._masked)
        self._mask[slot, :, :, start:self.t] = 0
        self._positions[slot] = length
        self._next[slot] = first
        self.starts[slot] = start

    # ------------------------------------------------------------ the cache

    def _reserve(self, tokens: int) -> None:
        """Make the cache at least `tokens` columns long (a longer one keeps the columns in use)."""
        if tokens <= self.cache_tokens:
            return
        import torch
        from transformers import StaticCache

        size = -(-tokens // CACHE_TOKENS_STEP) * CACHE_TOKENS_STEP
        config = self.model.config.get_text_config(decoder=True)
        heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        full = StaticCache(config=config, max_cache_len=size)
        full.early_initialization(self.max_batch_size, heads, head_dim, self.dtype, self.device)
        mask = torch.full((self.max_batch_size, 1, 1, size), torch.finfo(self.dtype).min, dtype=self.dtype,
                          device=self.device)
        if self.cache_tokens:  # columns in use move over as they are
            for new, old in zip(full.layers, self._layers):
                new.keys[:, :, :self.cache_tokens] = old.keys
                new.values[:, :, :self.cache_tokens] = old.values
            mask[..., :self.cache_tokens] = self._mask
        else:
            self._next = torch.zeros(self.max_batch_size, dtype=torch.long, device=self.device)
            self._positions = torch.zeros(self.max_batch_size, dtype=torch.long, device=self.device)
        self._layers, self._mask, self._masked = full.layers, mask, torch.finfo(self.dtype).min
        # One cache object per batch bucket, its tensors views of the full one's first rows: the slots stay put
        # and each bucket's compiled step sees fixed addresses.
        self._caches = {}
        for batch in self.buckets:
            view = StaticCache(config=config, max_cache_len=size)
            view.early_initialization(batch, heads, head_dim, self.dtype, torch.device("meta"))
            for layer, source in zip(view.layers, full.layers):
                layer.keys, layer.values = source.keys[:batch], source.values[:batch]
                layer.cumulative_length = source.cumulative_length  # one write column for every bucket
                layer.device = self.device
                if self.compile:
                    torch._dynamo.mark_static_address(layer.keys)
                    torch._dynamo.mark_static_address(layer.values)
                if self.dynamic:
                    _symbolic(layer.keys, batch, length_dim=2)
                    _symbolic(layer.values, batch, length_dim=2)
            self._caches[batch] = view
        self.cache_tokens = size
        self._set_t(self.t)

    def _shift(self, by: int) -> None:
        """Move every slot's columns `by` places (left when negative), so the write column moves with them."""
        if by == 0:
            return
        occupied = [s for s, held in enumerate(self.slots) if held is not None]
        low = min((self.starts[s] for s in occupied), default=self.t)
        if not (0 <= low + by and self.t + by <= self.cache_tokens):
            raise ModelError(f"decode cache of {self.cache_tokens} tokens cannot shift by {by}")
        for layer in self._layers:
            for tensor in (layer.keys, layer.values):
                tensor[:, :, low + by:self.t + by] = tensor[:, :, low:self.t].clone()
        moved = self._mask[..., low:self.t].clone()
        self._mask.fill_(self._masked)
        self._mask[..., low + by:self.t + by] = moved
        for s in occupied:
            self.starts[s] += by
        self._set_t(self.t + by)
        self.shifts += 1

    def _set_t(self, t: int) -> None:
        self.t = t
        for layer in self._layers:
            layer.cumulative_length.fill_(t)

    def _check_layers(self) -> None:
        from transformers import StaticCache

        config = self.model.config.get_text_config(decoder=True)
        probe = StaticCache(config=config, max_cache_len=CACHE_TOKENS_STEP)
        if any(type(layer).__name__ != "StaticLayer" for layer in probe.layers):
            raise ModelError(f"static decoding needs full-attention layers only; {config.model_type} has "
                             "sliding-window or other layers: set generate.decoding=eager")


@dataclass
class _Call:
    fn: Callable[[], Any]
    future: Future

    def run(self) -> None:
        try:
            self.future.set_result(self.fn())
        except Exception as exc:
            self.future.set_exception(exc)


def _symbolic(tensor, batch: int, length_dim: int | None = None) -> None:
    """Ask torch.compile to trace this input's batch size (above 1: a size of 1 is specialized anyway) and its cache
    length as symbols, so other buckets and lengths reuse the compiled step."""
    import torch

    if batch > 1:
        torch._dynamo.maybe_mark_dynamic(tensor, 0)
    if length_dim is not None:
        torch._dynamo.maybe_mark_dynamic(tensor, length_dim)


def common_prefix_len(rows: list[list[int]]) -> int:
    """Leading tokens all rows share, leaving each row at least one token to prefill (a forward needs one)."""
    shortest = min(len(r) for r in rows)
    n = 0
    while n < shortest - 1 and all(r[n] == rows[0][n] for r in rows):
        n += 1
    return n


def _cache_argument(model) -> str:
    """The forward's name for the KV cache: `cache` since transformers 5.2x, `past_key_values` before."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
