"""Files written atomically (a temp file in the target's folder, then os.replace, so that a crash
or a bad input never leaves a half-written file; the temp file is removed on any error); JSON files
read with a one-line error naming the file and the fix; and the sha256 of a file's bytes, which
links a plan to its profile and a model card to its weights."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temp path next to `path`; write it, and on exit it replaces `path` (mode 0644)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, data, **dumps_kw) -> Path:
    return write_text(path, json.dumps(data, indent=1, **dumps_kw) + "\n")


def read_json(path: str | os.PathLike, what: str, fix: str):
    """The JSON data of a file, or a UserError in one line, `{what} {path} <what is wrong>; {fix}`:
    missing, unreadable, not text, or not JSON (with the line and column of the first error)."""
    from litevar.models.core.errors import UserError
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} not found; {fix}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{what} {path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}): the file "
                        f"is truncated or corrupt; {fix}") from None
    except (UnicodeDecodeError, OSError) as e:
        raise UserError(f"{what} {path} is not a readable text file ({type(e).__name__}); {fix}") from None


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of the file's bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
