"""Worker log files Harvester uploads (``/api/v1/file_server/upload_jedi_log``), kept beside the DB.

Why: Harvester's propagator uploads each worker's batch logs (stdout, stderr, the batch
system's log) to the PanDA cache once the server accepted the worker, and logs an
error every cycle when that fails.  panda-server keeps them under its cache directory
(``<cache_dir>/jedilog/<base name>``) and answers with their URL; here they go to
``<db dir>/cache/jedilog/`` and the page serves them at ``/cache/jedilog/<name>``.

Harvester sends the bytes zlib-compressed as a multipart form field ``file``; they are
stored as sent (as the server does) and decompressed when shown.  The name comes from
the network: only its base name is used, and only if it is a plain file name
(:data:`NAME`), so an upload can never land outside the directory or replace a dot file.
Files are written 0600 through the one atomic writer.
"""

from __future__ import annotations

import email.parser
import email.policy
import os
import re
import zlib
from pathlib import Path

from compass_pilot.atomic import atomic_write_bytes

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,199}$")
SUBDIR = "jedilog"
#: uploads kept; past it the oldest go (an upload is at most the dispatcher's 32 MiB body limit)
MAX_FILES = 5000


class UploadError(ValueError):
    """An upload we refuse; the message is what the client is told."""


def cache_dir(db_path: str) -> Path | None:
    """Where a store's uploads live (None for an in-memory store)."""
    if db_path == ":memory:":
        return None
    return Path(db_path).resolve().parent / "cache" / SUBDIR


def safe_name(name: str) -> str:
    """The base name of ``name`` if it is a plain file name; else :class:`UploadError`."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    if not NAME.match(base):
        raise UploadError(f"refusing the file name {base[:60]!r}: letters, digits and ._+- only")
    return base


def parse_upload(body: bytes, content_type: str) -> tuple[str, bytes]:
    """The (file name, content) of the multipart form field ``file``."""
    if not content_type.lower().startswith("multipart/form-data"):
        raise UploadError("expected a multipart/form-data upload")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    if not message.is_multipart():
        raise UploadError("the upload has no parts")
    for part in message.iter_parts():
        if part.get_param("name", header="content-disposition") == "file":
            filename = part.get_filename()
            if not filename:
                raise UploadError("the 'file' field has no file name")
            content = part.get_payload(decode=True)
            return safe_name(filename), content if isinstance(content, bytes) else b""
    raise UploadError("no 'file' field in the upload")


def store(directory: Path, name: str, content: bytes) -> Path:
    """Write (or replace, as the server does) one uploaded log."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = directory / safe_name(name)
    atomic_write_bytes(target, content)  # mkstemp: 0600 from the start
    _prune(directory)
    return target


def _prune(directory: Path) -> None:
    """Keep the newest :data:`MAX_FILES` uploads, so the directory cannot grow without end."""
    entries = list(os.scandir(directory))
    if len(entries) <= MAX_FILES:
        return
    entries.sort(key=lambda e: e.stat().st_mtime)
    for entry in entries[: len(entries) - MAX_FILES]:
        try:
            os.unlink(entry.path)
        except OSError:
            pass


def read(directory: Path | None, name: str) -> bytes | None:
    """An uploaded log, decompressed when Harvester compressed it; None when there is none."""
    if directory is None:
        return None
    try:
        data = (directory / safe_name(name)).read_bytes()
    except (UploadError, OSError):
        return None
    try:
        return zlib.decompress(data)
    except zlib.error:
        return data
