"""User feedback on served answers: right or wrong, with the corrected SQL, kept for review.

`POST /v1/feedback` (and the chat page) sends `{question, model_sql, verdict, sql?}`. The SQL to keep (the
correction, or the model's SQL for an answer marked right) goes through the server's own check and sandbox
first; a record is then appended to `datasets/<name>/feedback.jsonl`, one JSON object per line, never to
`pairs.jsonl`: `text2sql data review --source feedback` turns the accepted ones into train pairs.

    {"id": "fb-<12 hex>", "question": ..., "sql": ..., "model_sql": ..., "verdict": "right" | "wrong",
     "run": <the model or run dir that answered>, "created": <ISO time>, "author": "feedback", "db": null}
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from text2sql.data.store import load_dataset

FEEDBACK_FILE = "feedback.jsonl"


class FeedbackRequest(BaseModel):
    """Body of POST /v1/feedback. `sql` (the corrected query) is required when the verdict is wrong."""

    model_config = ConfigDict(extra="forbid")
    question: str = Field(min_length=1)
    model_sql: str
    verdict: Literal["right", "wrong"]
    sql: str | None = None


def feedback_record(question: str, sql: str, model_sql: str, verdict: str, run: str) -> dict:
    """One line of feedback.jsonl.

    >>> r = feedback_record("How many stores?", "SELECT 1", "SELECT 2", "wrong", "runs/demo")
    >>> r["id"].startswith("fb-"), len(r["id"]), r["author"], r["db"]
    (True, 15, 'feedback', None)
    """
    return {"id": f"fb-{uuid.uuid4().hex[:12]}", "question": question, "sql": sql, "model_sql": model_sql,
            "verdict": verdict, "run": run, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "author": "feedback", "db": None}


class FeedbackStore:
    """Appends records to one JSONL file: whole lines, one writer at a time (a thread lock within the server, an
    exclusive `flock` across processes), each fsynced before the request is answered."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()

    def append(self, record: dict) -> None:
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode()
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                written = 0
                while written < len(line):
                    written += os.write(fd, line[written:])
                os.fsync(fd)
            finally:
                os.close(fd)  # closing releases the flock


def feedback_path(cfg) -> Path:
    """datasets/<data.dataset>/feedback.jsonl (the dataset the served model's pairs come from)."""
    return load_dataset(cfg).path / FEEDBACK_FILE
