"""The sandbox every untrusted query runs in: `QueryRunner`, a pool of worker processes holding a read-only,
locked-down connection (no external access, memory limit, thread count, row cap), with a timeout that interrupts
the query and kills the worker if it does not stop.

A worker runs one statement per call on a fresh cursor (no temp object outlives its query) under an address-space
cap (`MEMORY_SLACK_BYTES`). Workers fork from a forkserver that has imported this package: `_worker_main` is the
child's entry point, reached by its module path.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from text2sql.catalog import SchemaSnapshot, load_snapshot
from text2sql.errors import MissingDependencyError, SchemaSnapshotError, UnsafeSQLError
from text2sql.warehouse.engines import WarehouseSpec, open_connection
from text2sql.warehouse.guard import (
    SQLCheck,
    _OPENING_WORDS,
    _first_line,
    _first_word,
    _split_statements,
    binder_signature,
    binder_verdict,
    catalog_signature,
    check_reply_sql,
    check_sql,
    judge_reply,
    locate_sql,
    use_parser_connection,
)

if TYPE_CHECKING:
    from text2sql.config import Config


@dataclass
class QueryResult:
    columns: list[str] = field(default_factory=list)
    rows: list[tuple] = field(default_factory=list)
    error_kind: str | None = None
    """None on success; else refused | runtime_error | timeout."""
    error: str = ""
    truncated: bool = False
    elapsed_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"columns": self.columns, "rows": [[_jsonable(v) for v in r] for r in self.rows],
                "error_kind": self.error_kind, "error": self.error, "truncated": self.truncated,
                "elapsed_s": round(self.elapsed_s, 4)}


def _jsonable(v: Any) -> Any:
    import datetime as dt
    import decimal

    if isinstance(v, decimal.Decimal):
        return float(v)
    if isinstance(v, (dt.date, dt.datetime, dt.time)):
        return v.isoformat()
    if isinstance(v, (bytes, bytearray)):
        return v.hex()
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


MEMORY_SLACK_BYTES = 512 * 2**20
"""Address space a worker may use above its size when ready plus `memory_limit` (DuckDB's own limit covers
its buffer pool, not every allocation: a `repeat('x', 4e9)` string is outside it). Past it allocations fail."""
KILL_GRACE_S = 0.5
"""How long past the timeout a worker that ignores the interrupt is given before it is killed."""

# Statement kinds a worker runs (DuckDB's own parse): queries, and CREATE only on a read-only database file,
# where all it can make is a temp object (a top-level PIVOT makes an ENUM type) that dies with the query's cursor.
_WORKER_STATEMENTS = ("SELECT", "CREATE")


def _worker_main(conn, spec: WarehouseSpec, memory_limit: str, threads: int,
                 snapshot: SchemaSnapshot | None = None, binder: tuple | None = None) -> None:
    """Worker process: one locked-down database, each query on its own cursor (so nothing it creates outlives
    it), exactly one statement per call, an address-space cap, an interrupt at the deadline.

    Messages: `("run", sql, max_rows, timeout_s)` -> QueryResult; `("judge", reply, max_rows, timeout_s)` ->
    (sql, SQLCheck, QueryResult or None): the reply judged by `judge_reply` against `snapshot`, run when it passes;
    `("judge_many", [reply, ...], max_rows, timeout_s)` -> one "judge" answer per reply, each sent as it is ready.
    `binder`: the `binder_signature` of the snapshot; when the worker's database has the same, a reply's names are
    bound by running it, once (see `_judge_and_run`).
    """
    try:
        _require_result_modules()
        con = open_connection(spec, memory_limit, threads)
        bind_on_run = binder is not None and _same_catalog(con, binder)
        if not spec.setup_sql:  # no extension loaded: the parser is DuckDB's plain one
            use_parser_connection(con)
        _cap_address_space(memory_limit)
        conn.send(("ready", None))
    except MissingDependencyError as exc:  # its own status: the parent raises it as what to install
        conn.send(("missing", str(exc)))
        return
    except Exception as exc:
        conn.send(("failed", _first_line(f"{type(exc).__name__}: {exc}")))
        return
    watchdog = _Watchdog()
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        op, text, max_rows, timeout_s = message
        if op == "run":
            _send_answer(conn, op, _run_one(con, spec, text, max_rows, timeout_s, watchdog))
            continue
        # One reply per query, sent as soon as it is ready: the parent's per-query deadline holds within a batch.
        for reply in (text if op == "judge_many" else [text]):
            _send_answer(conn, "judge", _judge_and_run(con, spec, snapshot, reply, max_rows, timeout_s, watchdog,
                                                       bind_on_run))


def _require_result_modules() -> None:
    """DuckDB imports pytz to hand a TIMESTAMP WITH TIME ZONE value to Python. Without it every such query fails
    as if its SQL were wrong: a right answer scored a runtime error, retried, dropped as a candidate or as a
    synthetic pair. A worker refuses to start instead, and the command says what to install."""
    try:
        import pytz  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError("'pytz' is not installed: DuckDB needs it to return TIMESTAMP WITH TIME ZONE "
                                     "values (pip install pytz)") from exc


def _send_answer(conn, op: str, answer) -> None:
    try:
        conn.send(answer)
    except Exception as exc:  # a value that does not pickle
        failed = QueryResult(error_kind="runtime_error", error=f"result not transferable: {exc}")
        conn.send((answer[0], answer[1], failed) if op == "judge" else failed)


def _same_catalog(con, binder: tuple) -> bool:
    try:
        return catalog_signature(con) == binder
    except Exception:  # a catalog DuckDB cannot describe: bind with the binder as always
        return False


def _judge_and_run(con, spec: WarehouseSpec, snapshot, reply: str, max_rows: int, timeout_s: float,
                   watchdog: _Watchdog, bind_on_run: bool) -> tuple[str | None, SQLCheck, QueryResult | None]:
    """`judge_reply` and, when the SQL passes, its result. With `bind_on_run`, the names are bound by the run
    itself, and an error of its binder gets the verdict the binder's would (`binder_verdict`): the catalogs are
    alike, so the errors are too, and a failed bind runs nothing. Only a query naming `memory` is bound by the
    binder then, since the binder's connection has an empty `memory` database that the worker's has not."""
    sql, check = judge_reply(reply, snapshot, bind=not bind_on_run)
    if not check.ok:
        return sql, check, None
    errors: list[Exception] = []
    result = _run_one(con, spec, sql, max_rows, timeout_s, watchdog, errors)
    if bind_on_run and errors:
        named = check_reply_sql(sql, snapshot) if "memory" in sql.lower() else binder_verdict(errors[0], snapshot)
        if named is not None and not named.ok:
            return sql, named, None
    return sql, check, result


def _run_one(con, spec: WarehouseSpec, sql: str, max_rows: int, timeout_s: float, watchdog: _Watchdog,
             errors: list[Exception] | None = None) -> QueryResult:
    """One statement on a fresh cursor of `con`, closed afterwards (its temp views, tables, macros go with it).
    The error a failed query raised is appended to `errors` when given."""
    started = time.perf_counter()
    cursor = con.cursor()
    try:
        if spec.search_path:  # a per-connection setting: each cursor needs it
            cursor.execute(f"SET search_path = '{spec.search_path}'")
        written = sum(1 for _, code, _ in _split_statements(sql) if code)
        if written != 1:
            return QueryResult(error_kind="refused", error=f"{written} statements in one call: a worker runs exactly "
                                                           "one", elapsed_s=time.perf_counter() - started)
        # DuckDB's own parse: a top-level PIVOT expands to CREATE TYPE (temp) + SELECT, all else to one statement.
        statements = cursor.extract_statements(sql)
        for kind in (s.type.name for s in statements):
            if kind not in _WORKER_STATEMENTS or (kind == "CREATE" and spec.database == ":memory:"):
                return QueryResult(error_kind="refused", error=f"{kind} statement: a worker runs only queries",
                                   elapsed_s=time.perf_counter() - started)
        watchdog.arm(cursor, timeout_s)
        try:
            cursor.execute(statements[0] if len(statements) == 1 else sql)
            columns = [d[0] for d in cursor.description or []]
            rows = cursor.fetchmany(max_rows + 1)
        finally:
            watchdog.disarm()
        result = QueryResult(columns, rows[:max_rows], truncated=len(rows) > max_rows)
    except Exception as exc:
        if errors is not None:
            errors.append(exc)
        kind = "timeout" if "INTERRUPT" in str(exc).upper() else "runtime_error"
        result = QueryResult(error_kind=kind, error=_first_line(f"{type(exc).__name__}: {exc}"))
    finally:
        cursor.close()
    result.elapsed_s = time.perf_counter() - started
    return result


class _Watchdog:
    """One thread per worker that interrupts the running cursor at its deadline (no thread started per query).

    Arming wakes the thread only when the new deadline comes before the one it sleeps until: under a steady
    stream of queries with one timeout each deadline is later than the last, so the thread wakes at the old
    deadline, sees the new one and sleeps again, instead of being woken (a thread switch) for every query."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._cursor, self._deadline = None, 0.0
        self._sleeping_until = float("inf")
        threading.Thread(target=self._loop, daemon=True, name="text2sql-watchdog").start()

    def arm(self, cursor, timeout_s: float) -> None:
        with self._cond:
            self._cursor, self._deadline = cursor, time.monotonic() + timeout_s
            if self._deadline < self._sleeping_until:
                self._cond.notify()

    def disarm(self) -> None:
        with self._cond:
            self._cursor = None

    def _loop(self) -> None:
        with self._cond:
            while True:
                if self._cursor is None:
                    self._sleeping_until = float("inf")
                    self._cond.wait()
                    continue
                left = self._deadline - time.monotonic()
                if left > 0:
                    self._sleeping_until = self._deadline
                    self._cond.wait(left)
                    continue
                self._cursor.interrupt()
                self._cursor = None


def _cap_address_space(memory_limit: str) -> None:
    """RLIMIT_AS: the worker's size now + `memory_limit` + MEMORY_SLACK_BYTES; past it allocations fail (DuckDB
    reports an out-of-memory error, or the process dies and is replaced) instead of the machine swapping."""
    import resource

    limit = _parse_bytes(memory_limit)
    if limit is None:
        return
    with open("/proc/self/statm") as f:
        size = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    cap = size + limit + MEMORY_SLACK_BYTES
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def _parse_bytes(text: str) -> int | None:
    """Bytes in a DuckDB size setting ('2GB' = 2e9, '512MiB'); None when it is not one (e.g. a percentage).

    >>> _parse_bytes("2GB"), _parse_bytes("1.5 GiB"), _parse_bytes("80%")
    (2000000000, 1610612736, None)
    """
    match = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", text or "")
    if not match or match.group(2).lower() not in _UNITS:
        return None
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def _worker_context():
    """Workers fork from a server process that has imported this module and DuckDB once (a fresh interpreter per
    worker costs ~0.5 s of CPU, and eval starts workers for every database); "spawn" where there is no fork."""
    global _CONTEXT
    if _CONTEXT is None:
        if "forkserver" in mp.get_all_start_methods():
            _CONTEXT = mp.get_context("forkserver")
            _CONTEXT.set_forkserver_preload(["duckdb", "pytz", __name__])  # a missing one is skipped here
        else:
            _CONTEXT = mp.get_context("spawn")
    return _CONTEXT


_CONTEXT = None
_MAIN_SWAP = threading.Lock()


def _start_without_main(process) -> None:
    """Start `process` without it re-running the parent's main script first: a forkserver or spawn child imports the
    `__main__` of its parent (`text2sql`'s console script imports the whole CLI: ~40 ms of CPU per worker, for
    each database's workers), found through `sys.modules["__main__"]` when the process starts. A worker needs
    nothing from it (its target and arguments live in this package), so it starts while a bare module stands in."""
    import sys
    import types

    with _MAIN_SWAP:  # workers start from several threads: one swap at a time, always undone
        main = sys.modules["__main__"]
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            process.start()
        finally:
            sys.modules["__main__"] = main


class _Worker:
    def __init__(self, spec: WarehouseSpec, memory_limit: str, threads: int, snapshot: SchemaSnapshot | None = None,
                 binder: tuple | None = None):
        ctx = _worker_context()
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child, spec, memory_limit, threads, snapshot, binder),
                                   daemon=True)
        _start_without_main(self.process)
        child.close()
        status, detail = self.conn.recv() if self.conn.poll(60) else ("failed", "worker did not start in 60 s")
        if status != "ready":
            self.kill()
            if status == "missing":
                raise MissingDependencyError(detail)
            raise SchemaSnapshotError(f"cannot open the warehouse: {detail}")

    def run(self, sql: str, max_rows: int, timeout_s: float, op: str = "run"):
        """The worker's answer to one message, or None when it had to be killed (it ignored the interrupt,
        or died: out of memory)."""
        self.conn.send((op, sql, max_rows, timeout_s))
        if self.conn.poll(timeout_s + KILL_GRACE_S):
            try:
                return self.conn.recv()
            except EOFError:
                return None
        return None

    def answers(self, op: str, texts: list[str], max_rows: int, timeout_s: float):
        """The worker's answers to one message of several queries, one at a time as each is ready; each is
        awaited for at most `timeout_s` + KILL_GRACE_S (from the one before), as `run` awaits its one. Ends early,
        after yielding None, when the worker had to be killed."""
        self.conn.send((op, texts, max_rows, timeout_s))
        for _ in texts:
            answer = None
            if self.conn.poll(timeout_s + KILL_GRACE_S):
                try:
                    answer = self.conn.recv()
                except EOFError:
                    pass
            yield answer
            if answer is None:
                return

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)

    def close(self) -> None:
        try:
            self.conn.send(None)
        except (BrokenPipeError, OSError):
            pass
        self.process.join(2)
        self.kill()


# The first word of a reply after whitespace and comments, or an opening parenthesis.
_LEADING_WORD = re.compile(r"(?:\s|--[^\n]*|/\*.*?\*/)*(\(|[A-Za-z_]\w*)", re.DOTALL)


class QueryRunner:
    """A pool of sandboxed DuckDB worker processes.

    Args:
        spec: what each worker opens.
        workers: processes (0 = one per CPU core).
        timeout_s: hard limit per query; past it the query is interrupted, and its worker killed and replaced
            if it does not stop within KILL_GRACE_S.
        max_rows: row cap; longer results are truncated and flagged.
        memory_limit, threads: DuckDB settings per worker; the worker's address space is capped at its size
            when ready + memory_limit + MEMORY_SLACK_BYTES.
        snapshot: when given, every query is first checked with `check_sql` against it (else only for safety),
            and `judge_and_run` judges replies against it inside the workers.
    """

    def __init__(self, spec: WarehouseSpec, workers: int = 1, timeout_s: float = 10.0, max_rows: int = 10000,
                 memory_limit: str = "2GB", threads: int = 1, snapshot: SchemaSnapshot | None = None):
        self.spec, self.timeout_s, self.max_rows = spec, timeout_s, max_rows
        self.memory_limit, self.threads, self.snapshot = memory_limit, threads, snapshot
        self.size = workers or os.cpu_count() or 1
        self._idle: list[_Worker] = []
        self._lock = threading.Lock()
        self._available = threading.Semaphore(self.size)
        # A plain database file: its workers may bind replies by running them (see `_judge_and_run`).
        plain_file = spec.database != ":memory:" and not (spec.setup_sql or spec.search_path or spec.allowed_directories)
        self._binder = binder_signature(snapshot) if snapshot is not None and plain_file else None

    @classmethod
    def from_config(cls, cfg: Config, spec: WarehouseSpec | None = None, workers: int = 1, **kwargs) -> QueryRunner:
        w = cfg.warehouse
        options = dict(timeout_s=w.timeout_s, max_rows=w.max_rows, memory_limit=w.memory_limit, threads=w.threads)
        options.update(kwargs)
        return cls(spec or WarehouseSpec.from_config(cfg, options.get("snapshot")), workers=workers, **options)

    def run(self, sql: str, max_rows: int | None = None, checked: bool = False) -> QueryResult:
        """Run one query in the sandbox. Never raises for bad SQL: the result says what went wrong.

        `checked=True` skips `check_sql` for SQL the caller has just checked (parsing is most of the cost
        of a small query); the locked-down connection still refuses anything but reading.
        """
        check = SQLCheck(True) if checked else check_sql(sql, self.snapshot)
        if not check.ok and check.kind in ("parse_error", "refused"):
            return QueryResult(error_kind="refused" if check.kind == "refused" else "runtime_error", error=check.message)
        return self._send("run", sql, max_rows)

    def judge_and_run(self, reply: str | None, max_rows: int | None = None) -> tuple[str | None, SQLCheck,
                                                                                         QueryResult | None]:
        """`judge_reply(reply, snapshot)` and, when the SQL passes, its result: both inside a worker, so that the
        (sqlglot) judging of many replies runs in parallel. The result is None when the SQL did not pass."""
        if not reply or not reply.strip():
            return judge_reply(reply, self.snapshot) + (None,)
        answer = self._send("judge", reply, max_rows)
        if isinstance(answer, QueryResult):  # the worker was killed: judge here, report what stopped it
            sql, check = judge_reply(reply, self.snapshot)
            return sql, check, answer if check.ok else None
        return answer

    def judge_and_run_each(self, replies: list[str | None], max_rows: int | None = None):
        """`judge_and_run` of each reply, yielded as (index, answer) as each is ready: many replies to one worker
        message (one round trip for the lot, not one per reply), each under the same timeout as alone."""
        todo = []
        for i, reply in enumerate(replies):
            if reply and reply.strip():
                todo.append(i)
            else:
                yield i, self.judge_and_run(reply, max_rows)
        while todo:
            with self._available:
                worker, done, healthy = self._take(), 0, False
                try:
                    started = time.perf_counter()
                    for answer in worker.answers("judge_many", [replies[i] for i in todo], max_rows or self.max_rows,
                                                 self.timeout_s):
                        if answer is None:  # the worker was killed: judge here, report what stopped it
                            sql, check = judge_reply(replies[todo[done]], self.snapshot)
                            answer = (sql, check, self._stopped(worker, started) if check.ok else None)
                        yield todo[done], answer
                        done, started = done + 1, time.perf_counter()
                    healthy = worker.process.exitcode is None and done == len(todo)
                finally:
                    todo = todo[done:]
                    if healthy:
                        with self._lock:
                            self._idle.append(worker)
                    else:  # killed, or left with answers not read (the caller stopped early)
                        worker.kill()

    def judge_here(self, reply: str | None) -> tuple[str | None, SQLCheck, None] | None:
        """`judge_and_run`'s answer for a reply refused before any name is bound (more than one statement, or one
        that is not a query), judged in this process without a worker's round trip; None for any other reply.
        Such verdicts come from the reply's text and DuckDB's plain parser only, as in a worker."""
        opening = _LEADING_WORD.match(reply or "")
        if opening and opening.group(1).lower() in _OPENING_WORDS and ";" not in reply:
            return None  # one query, by its look: the worker judges it (the common case, kept cheap)
        located = locate_sql(reply)
        if located is not None and len(located[0]) == 1 and _first_word(located[0][0]).lower() in _OPENING_WORDS:
            return None
        sql, check = judge_reply(reply, self.snapshot, bind=False)
        return (sql, check, None) if not check.ok and check.kind in ("refused", "parse_error", "no_sql") else None

    def _send(self, op: str, text: str, max_rows: int | None):
        with self._available:
            worker = self._take()
            started = time.perf_counter()
            answer = worker.run(text, max_rows or self.max_rows, self.timeout_s, op)
            if answer is None:
                return self._stopped(worker, started)
            with self._lock:
                self._idle.append(worker)
            return answer

    def _stopped(self, worker: _Worker, started: float) -> QueryResult:
        """The result of a query whose worker gave no answer in time (it ignored the interrupt) or died: the
        worker is killed."""
        worker.kill()
        died = worker.process.exitcode not in (None, -9)  # -9: killed here, at the deadline
        error = (f"the worker died (exit code {worker.process.exitcode}, out of memory?)" if died
                 else f"stopped after {self.timeout_s:g} s (worker killed)")
        return QueryResult(error_kind="runtime_error" if died else "timeout", error=error,
                           elapsed_s=time.perf_counter() - started)

    def run_many(self, sqls: list[str], max_rows: int | None = None, checked: bool = False) -> list[QueryResult]:
        """Run queries in parallel across the workers; results in input order (`checked` as in `run`)."""
        from concurrent.futures import ThreadPoolExecutor

        if self.size == 1 or len(sqls) <= 1:
            return [self.run(s, max_rows, checked) for s in sqls]
        with ThreadPoolExecutor(self.size) as pool:
            return list(pool.map(lambda s: self.run(s, max_rows, checked), sqls))

    def start(self) -> QueryRunner:
        """Start the workers now instead of at the first queries (to ready one database while another is used)."""
        with self._lock:
            missing = self.size - len(self._idle)
        started: list[_Worker] = []
        try:
            for _ in range(missing):
                started.append(self._new_worker())
        except BaseException:
            for worker in started:
                worker.close()
            raise
        with self._lock:
            self._idle.extend(started)
        return self

    def _take(self) -> _Worker:
        with self._lock:
            while self._idle:
                worker = self._idle.pop()
                if worker.process.is_alive():
                    return worker
        return self._new_worker()

    def _new_worker(self) -> _Worker:
        return _Worker(self.spec, self.memory_limit, self.threads, self.snapshot, self._binder)

    def close(self) -> None:
        with self._lock:
            workers, self._idle = self._idle, []
        for worker in workers:
            worker.close()

    def __enter__(self) -> QueryRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_query(cfg: Config, sql: str, max_rows: int | None = None) -> QueryResult:
    """Check and run one read-only query on the project warehouse (the `text2sql query` command)."""
    snapshot = load_snapshot(cfg)
    check = check_sql(sql, snapshot)
    if not check.ok:
        raise UnsafeSQLError(f"{check.kind}: {check.message}")
    with QueryRunner.from_config(cfg, snapshot=snapshot) as runner:
        return runner.run(sql, max_rows, checked=True)  # just checked above


def render_table(result: QueryResult) -> str:
    """A terminal table of a result (or its error)."""
    if result.error_kind:
        return f"{result.error_kind}: {result.error}"
    from rich.console import Console
    from rich.table import Table

    table = Table(*result.columns)
    for row in result.rows:
        table.add_row(*("NULL" if v is None else str(v) for v in row))
    console = Console(record=True, width=160)
    with console.capture() as capture:
        console.print(table)
    footer = f"{len(result.rows)} row(s){' (truncated)' if result.truncated else ''} in {result.elapsed_s * 1000:.0f} ms"
    return capture.get() + footer
