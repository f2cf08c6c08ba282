"""File helpers shared by every stage: atomic writes (a reader never sees a half-written file), hashes, JSON."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from text2sql.errors import DataError, Text2SQLError


def write_atomic(path: str | Path, data: str | bytes, mode: int = 0o644, durable: bool = False) -> None:
    """Write to a temp file in the same directory, then rename it over `path` (0644, like an ordinary file).

    `durable`: fsync the file before the rename and the directory after it, so a power cut can bring back
    neither a half-written file nor the old directory entry (for data that is not rebuilt by a command).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)  # mkstemp makes it private
            f.write(data.encode() if isinstance(data, str) else data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def sha256_file(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_json_or_empty(path: str | Path) -> dict:
    """A JSON file's content, or {} when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def read_text(path: str | Path, error: type[Text2SQLError] = DataError) -> str:
    """A text input file as UTF-8, newlines made `\\n` (as `Path.read_text`); every user file is read through here.

    Raises:
        `error` (DataError unless the caller names another): the file is not UTF-8, named with the first
        bad byte and its offset, e.g. `data.jsonl: not UTF-8 (byte 0xff at offset 12)`.

    >>> import tempfile; f = Path(tempfile.mkdtemp()) / "x.txt"; _ = f.write_bytes(b"ok\\r\\n\\xff")
    >>> read_text(f)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    text2sql.errors.DataError: ...x.txt: not UTF-8 (byte 0xff at offset 4)
    """
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")
