"""One question's way through the server: prompt -> backend -> judged SQL -> (execute) -> (retry with the error)."""

import asyncio
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from text2sql.errors import ModelError
from text2sql.models import resolve_model_dir
from text2sql.prompt import PromptBuilder, PromptSettings, correction_messages, model_prompt_settings, worth_retrying
from text2sql.select import StoredCandidate, select_candidate
from text2sql.warehouse import QueryResult, QueryRunner, SQLCheck, check_sql, extract_sql, judge_reply

if TYPE_CHECKING:
    from text2sql.catalog import SchemaSnapshot
    from text2sql.config import Config

log = logging.getLogger("text2sql.serve")


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
    ensemble: dict[str, int] | None = None
    """Several members only: `{member, votes, members}`, who answered the first attempt and how many agreed."""
    gen_ms: float = 0.0
    """Wall time waiting for replies, all attempts (queue, prefill, decode; candidate selection's runs included)."""
    run_ms: float = 0.0
    """Wall time judging replies and running them in the sandbox, all attempts."""

    def to_json(self, started: float | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"sql": self.sql, "tables": self.tables, "valid": self.valid, "retried": self.retried}
        if self.error_kind:
            out |= {"error": self.error, "error_kind": self.error_kind}
        if self.result is not None and not self.result.error_kind:
            result = self.result.to_json()
            out |= {"columns": result["columns"], "rows": _json_value(result["rows"]), "truncated": result["truncated"]}
        if self.ensemble is not None:
            out["ensemble"] = self.ensemble
        if started is not None:
            out["latency_ms"] = round((time.perf_counter() - started) * 1000, 1)
        return out

    def log_fields(self, question_chars: int) -> dict[str, Any]:
        fields = {"valid": self.valid, "error_kind": self.error_kind, "retried": self.retried, "batch": self.batch_size,
                  "executed": self.result is not None, "question_chars": question_chars,
                  "gen_ms": round(self.gen_ms, 1), "run_ms": round(self.run_ms, 1)}
        if self.ensemble is not None:
            fields |= {"member": self.ensemble["member"], "votes": self.ensemble["votes"]}
        return fields


@dataclass
class _Member:
    """One model of the server: its backend, and the prompt builder made from its own prompt settings."""

    backend: Any
    prompts: "PromptBuilder"
    name: str
    """What feedback records as `answered_by` and /v1/models lists: the model dir, or the upstream URL."""


class _Pipeline:
    """Question -> prompt -> backend -> SQL -> check -> (execute) -> (retry with the error).

    With several members (an ensemble), every member answers the first attempt and the reply whose result most
    of them share wins (`select_candidate`, as `eval` selects an ensemble's predictions); retries go to the member
    that won, with its own prompt."""

    num_candidates = 1
    """First attempt from this many candidates (`text2sql.select`); retries, if needed, are greedy as before."""
    sampling: Any = None

    def __init__(self, snapshot: "SchemaSnapshot", members: list[_Member], runner: "QueryRunner", retries: int,
                 query_workers: int):
        self.snapshot, self.members, self.runner, self.retries = snapshot, members, runner, retries
        self._queries = ThreadPoolExecutor(max(1, query_workers), thread_name_prefix="text2sql-query")

    def messages(self, question: str, member: int = 0) -> list[dict[str, str]]:
        """The prompt of `member`, built as `generate.predict` builds it for a lakehouse question (db None)."""
        return self.members[member].prompts.messages(question, db=None)

    async def answer(self, question: str, max_new_tokens: int, execute: bool = False, max_rows: int = 0,
                     on_text: Callable[[str], None] | None = None) -> _Answer:
        """`on_text` gets the model's text as it comes (each attempt's; a retry starts on a new line)."""
        chats = [self.messages(question, i) for i in range(len(self.members))]  # each member's own prompt
        messages = chats[0]
        prompt_tokens = completion_tokens = 0
        member, ensemble = 0, None
        gen_s = run_s = 0.0
        for attempt in range(self.retries + 1):
            if on_text is not None and attempt:
                on_text("\n")
            started = time.perf_counter()
            ran = None  # the result of `sql` when candidate selection has run it
            if attempt == 0 and len(self.members) > 1:
                member, ensemble, done, sql, ran = await self._ensemble(chats, max_new_tokens)
                messages = chats[member]  # the retries go to the member that won, in its prompt
                if on_text is not None:
                    on_text(done.text)
            elif attempt == 0 and self.num_candidates > 1:
                done, sql, ran = await self._best_candidate(messages, max_new_tokens)
                if on_text is not None:
                    on_text(done.text)
            else:
                done = await self.members[member].backend.complete(messages, max_new_tokens, on_text=on_text)
                sql = None
            prompt_tokens += done.prompt_tokens
            completion_tokens += done.completion_tokens
            replied = time.perf_counter()
            gen_s += replied - started
            # The reply is judged whole, by the function eval judges with: "DROP TABLE t; SELECT ..." is refused.
            # To execute, it is judged and run in a sandbox worker process: sqlglot's Python there does not hold
            # this process's GIL, which the engine thread needs at every decode step. SQL that selection has just
            # run is not run again (`_judge_and_reuse`).
            result = None
            if execute:
                judged, check, result = await asyncio.get_running_loop().run_in_executor(
                    self._queries, self._judge_and_reuse, done.text, max_rows, sql, ran)
            else:
                judged, check = judge_reply(done.text, self.snapshot)
            run_s += time.perf_counter() - replied
            sql = judged if judged is not None else (sql or done.text.strip())
            answer = _Answer(sql, check.tables, check.ok, check.kind, "" if check.ok else check.message,
                             retried=attempt > 0, batch_size=done.batch_size, ensemble=ensemble)
            if result is not None:
                answer.result, answer.error_kind, answer.error = result, result.error_kind, result.error
            if not worth_retrying(answer.error_kind) or attempt == self.retries:
                break
            messages = correction_messages(messages, sql, answer.error_kind, answer.error)
        answer.prompt_tokens, answer.completion_tokens = prompt_tokens, completion_tokens
        answer.gen_ms, answer.run_ms = 1000 * gen_s, 1000 * run_s
        return answer

    def _judge_and_reuse(self, reply: str, max_rows: int, sql: str | None, ran: "QueryResult | None"
                         ) -> tuple[str | None, SQLCheck, "QueryResult | None"]:
        """`runner.judge_and_run(reply, max_rows)`, reusing `ran`, the result candidate selection got for `sql`
        (same runner: same sandbox, timeout, memory), so that the chosen SQL runs once a request.

        The whole reply is still judged: `judge_reply` with the binder (the worker's judgement, or a stricter one
        when the worker leaves names to the run; DuckDB only, well under a millisecond). Only a reply that passes
        and yields exactly `sql` reuses `ran`; anything else, a refusal included, goes to `judge_and_run` as
        before, so the verdict and what runs are unchanged."""
        cap = self.runner.max_rows  # selection's run (`run_many`, no max_rows) fetched at most this many rows
        limit = max_rows or cap  # the rows `judge_and_run` would keep
        # A request wanting more rows than that run fetched, when it was cut short, runs again to get them.
        if ran is not None and not ran.error_kind and (limit <= cap or not ran.truncated):
            judged, check = judge_reply(reply, self.runner.snapshot)
            if check.ok and judged == sql:
                # The worker's cut: the first `limit` rows, flagged when the query had more.
                rows = ran.rows[:limit]
                return judged, check, replace(ran, rows=rows, truncated=ran.truncated or len(ran.rows) > limit)
        return self.runner.judge_and_run(reply, max_rows)

    async def _best_candidate(self, messages: list[dict[str, str]], max_new_tokens: int
                              ) -> tuple[_Completion, str | None, "QueryResult | None"]:
        """The candidate most of `num_candidates` agree on by result (each one checked and run in the sandbox),
        with that result; the greedy one (and None) when none is valid, so the retry loop then corrects it as it
        would a greedy reply."""
        done, candidates = await self.members[0].backend.candidates(messages, max_new_tokens, self.num_candidates,
                                                                    self.sampling)
        loop = asyncio.get_running_loop()
        selection = await loop.run_in_executor(self._queries, select_candidate, candidates, self.runner, self.snapshot)
        chosen = candidates[selection.index]
        return (_Completion(chosen.raw, done.prompt_tokens, done.completion_tokens, done.batch_size), chosen.sql,
                selection.result)

    async def _ensemble(self, chats: list[list[dict[str, str]]], max_new_tokens: int
                        ) -> tuple[int, dict[str, int], _Completion, str | None, "QueryResult | None"]:
        """(the winning member, the reply's `ensemble` field, its reply, its SQL, that SQL's result from selection
        or None): every member answers its chat at once; the reply whose result most replies share wins, a tie goes
        to the earliest member (all log-probabilities equal), and with no valid reply the first member's is kept
        (with no result) for the retry loop to correct.
        A member that fails (its engine down, its queue full) is left out of the vote; all failing fails."""
        replies = await asyncio.gather(*(m.backend.complete(chat, max_new_tokens)
                                         for m, chat in zip(self.members, chats)), return_exceptions=True)
        for i, reply in enumerate(replies):
            if isinstance(reply, BaseException) and not isinstance(reply, Exception):
                raise reply  # cancelled: the client went away
            if isinstance(reply, Exception):
                log.warning("ensemble member failed", extra={"fields": {
                    "member": i, "error": f"{type(reply).__name__}: {reply}"}})
        answered = [i for i, reply in enumerate(replies) if not isinstance(reply, BaseException)]
        if not answered:
            raise replies[0]
        candidates = [StoredCandidate(extract_sql(replies[i].text), replies[i].text, 0.0) for i in answered]
        loop = asyncio.get_running_loop()
        selection = await loop.run_in_executor(self._queries, select_candidate, candidates, self.runner, self.snapshot)
        member, sql = answered[selection.index], candidates[selection.index].sql
        done = _Completion(replies[member].text, sum(replies[i].prompt_tokens for i in answered),
                           sum(replies[i].completion_tokens for i in answered), replies[member].batch_size)
        return member, {"member": member, "votes": selection.votes, "members": len(self.members)}, done, sql, \
            selection.result

    async def validate(self, sql: str) -> str:
        """Why `sql` cannot be kept ('' when it passes the check and runs in the sandbox)."""
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
    if not model_dir:
        return PromptSettings(cfg.prompt), None  # the budgets are then counted as 4 characters a token
    from transformers import AutoTokenizer

    path = resolve_model_dir(cfg, model_dir)
    settings = model_prompt_settings(path, cfg.prompt)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # no tokenizer files, or unreadable ones
        raise ModelError(f"cannot load the tokenizer of {path} (needed for the prompt's budgets): {exc}") from exc
    return settings, tokenizer
