"""Progress on stderr for the steps that take more than a few seconds (generation, scoring, model pull, builds).

A step prints its own start and end lines (they stay in logs); `progress_bar` adds a live rich bar with rate
and ETA in between, only when stderr is a terminal, so a CI log or a redirected file gets no control codes.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any


def stderr_console(force_terminal: bool | None = None) -> Any:
    """A rich Console on stderr (`force_terminal` for tests that want the live bar in a pipe)."""
    from rich.console import Console

    return Console(stderr=True, force_terminal=force_terminal)


@contextlib.contextmanager
def progress_bar(description: str, total: int, unit: str = "it", console: Any = None) -> Iterator[Callable[[int], None]]:
    """Yield `advance(n)`: a bar with done/total, rate (`unit`/s), elapsed time and ETA while the block runs.

    Does nothing (the callable is a no-op) when stderr is not a terminal or there is nothing to count.
    """
    console = console or stderr_console()
    if total <= 0 or not console.is_terminal:
        yield lambda n=1: None
        return
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task) -> Text:
            return Text(f"{task.speed:.2f} {unit}/s" if task.speed else f"- {unit}/s")

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)


@contextlib.contextmanager
def step(start: str, echo: Callable[[str], Any] | None = None) -> Iterator[None]:
    """Print `start`, run the block (with a spinner on a terminal), then `<start>: done in 12.3 s`."""
    echo = echo or (lambda text: print(text, file=sys.stderr, flush=True))
    echo(f"{start} ...")
    console = stderr_console()
    started = time.perf_counter()
    status = console.status(start) if console.is_terminal else contextlib.nullcontext()
    with status:
        yield
    echo(f"{start}: done in {format_seconds(time.perf_counter() - started)}")


def format_seconds(seconds: float) -> str:
    """Short human time.

    >>> format_seconds(4.25), format_seconds(1104)
    ('4.2 s', '18 min 24 s')
    """
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"
