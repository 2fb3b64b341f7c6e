"""Reading an export (see :mod:`._portable`): its lines parsed, and every field checked.

A field is held to the checks :meth:`HelaMemory.add` applies to the same
value (ids, content, event times, scopes, JSON fields), and to the ranges the
engine keeps elsewhere (times in years 1..9999, edge weights in [0, 1],
counts >= 0, finite vectors of the embedder's dimension), so a hand-edited
file is refused whole, naming its line, instead of storing values that later
reads cannot turn back into memories.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from ._inputs import check_content
from .errors import DiskFullError, InvalidInputError, StorageError
from .text import safe_text
from .types import Scope, check_id, check_role, dump_json, normalize_scope, to_timestamp

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "HEADER_PREFIX",
    "ExportFormatError",
    "MemoryLine",
    "Reader",
    "Spool",
    "export_embedder",
    "header",
]

FORMAT = "helamem.scope"
FORMAT_VERSION = 1
HEADER_PREFIX = b'{"type":"header","format":"helamem.scope"'
"""The first bytes of every export (its header line as ``export_scope`` writes it: keys
in that order, compact separators): a file starting so is an earlier export."""
_BIGINT = 2**63 - 1


class ExportFormatError(InvalidInputError):
    """The file is not a complete HeLa-Mem scope export this version can read."""


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number (write finite numbers only)")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is too large for a float")
    return value


@dataclass(frozen=True, slots=True)
class MemoryLine:
    """A checked ``memory`` line (``vector`` None: to be recomputed)."""

    line: int
    id: str
    rel: Scope
    kind: str
    content: str
    role: str | None
    event_time: float
    created_at: float
    keywords: str
    metadata: str
    provenance: str
    access_count: int
    last_access: float | None
    vector: bytes | None
    unique_key: str | None = None


class Reader:
    """The lines of an export, parsed and checked one at a time."""

    def __init__(self, path: Path, f: IO[str]) -> None:
        self.path = path
        self._f = f
        self.lineno = 0

    def error(self, why: str, line: int | None = None) -> ExportFormatError:
        return ExportFormatError(
            f"{self.path} line {self.lineno if line is None else line}: {why}; pass an "
            f"unmodified file written by HelaMemory.export_scope()"
        )

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for raw in self._f:
            self.lineno += 1
            try:
                obj = json.loads(raw, parse_constant=_no_constant, parse_float=_finite)
            except ValueError as exc:
                raise self.error(f"not JSON ({exc})") from exc
            if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
                raise self.error("not an object with a 'type'")
            yield obj

    def get(self, obj: dict[str, Any], key: str, *types: type, null: bool = False) -> Any:
        value = obj.get(key)
        if value is None and null:
            return None
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if not ok:
            raise self.error(f"field {key!r} of a {obj['type']} line is {value!r}")
        return value

    def rel(self, obj: dict[str, Any]) -> Scope:
        rel = self.get(obj, "scope", list)
        if not rel:
            return ()
        try:
            return normalize_scope(rel)
        except InvalidInputError as exc:
            if any(isinstance(s, str) and "\x00" in s for s in rel):
                raise self.refused(exc) from exc  # NUL: an export of an older SQLite store
            raise self.error(f"scope {rel!r}: {exc}") from exc

    def role(self, obj: dict[str, Any]) -> str | None:
        try:
            return check_role(self.get(obj, "role", str, null=True))
        except ExportFormatError:
            raise
        except InvalidInputError as exc:
            raise self.refused(exc) from exc

    def refused(self, exc: InvalidInputError) -> InvalidInputError:
        """``exc`` (a value no store accepts now) at this line, with the fix."""
        return type(exc)(
            f"{self.path} line {self.lineno}: {exc}; nothing was imported: replace it in the "
            f"file (there NUL is written \\u0000) and import again"
        )

    def json_text(self, obj: dict[str, Any], key: str, kind: type) -> str:
        value = self.get(obj, key, kind)
        if kind is list and not all(isinstance(v, str) for v in value):
            raise self.error(f"field {key!r} of a {obj['type']} line holds a non-string")
        try:
            return dump_json(value, key)
        except InvalidInputError as exc:
            raise self.error(str(exc)) from exc

    def time(self, obj: dict[str, Any], key: str) -> float:
        """A time field: POSIX seconds within years 1..9999, as ``add`` takes an event time."""
        value = self.get(obj, key, float, int)
        try:
            return to_timestamp(value, default=0.0)
        except InvalidInputError as exc:
            why = f"field {key!r} of a {obj['type']} line is {value!r}, outside years 1..9999"
            raise self.error(why) from exc

    def count(self, obj: dict[str, Any], key: str, top: int = _BIGINT) -> int:
        value: int = self.get(obj, key, int)
        if not 0 <= value <= top:
            raise self.error(f"field {key!r} of a {obj['type']} line is {value!r}, not in 0..{top}")
        return value

    def weight(self, obj: dict[str, Any]) -> float:
        value = float(self.get(obj, "weight", float, int))
        if not 0.0 <= value <= 1.0:
            raise self.error(f"field 'weight' of an edge line is {value!r}, not in [0, 1]")
        return value

    def memory(self, obj: dict[str, Any], dim: int, reuse: bool) -> MemoryLine:
        """Check a ``memory`` line; ``reuse``: keep its vector (``dim`` floats)."""
        try:
            mid = check_id(self.get(obj, "id", str))
        except InvalidInputError as exc:
            raise self.error(str(exc)) from exc
        assert mid is not None
        content = self.get(obj, "content", str)
        raw = self.get(obj, "content_raw", str, null=True)
        if raw is not None:
            try:
                content = base64.b64decode(raw, validate=True).decode("utf-8", "surrogatepass")
            except (binascii.Error, ValueError) as exc:
                raise self.error(f"content_raw of {mid!r} is not base64 of UTF-8") from exc
        try:
            check_content(content)
        except InvalidInputError as exc:
            raise self.error(f"memory {mid!r}: {exc}") from exc
        kind = self.get(obj, "kind", str)
        if kind not in ("episodic", "semantic"):
            raise self.error(f"kind {kind!r} is neither 'episodic' nor 'semantic'")
        return MemoryLine(
            line=self.lineno,
            id=mid,
            rel=self.rel(obj),
            kind=kind,
            content=content,
            role=self.role(obj),
            event_time=self.time(obj, "event_time"),
            created_at=self.time(obj, "created_at"),
            keywords=self.json_text(obj, "keywords", list),
            metadata=self.json_text(obj, "metadata", dict),
            provenance=self.json_text(obj, "provenance", list),
            access_count=self.count(obj, "access_count"),
            last_access=None if obj.get("last_access") is None else self.time(obj, "last_access"),
            vector=self._vector(obj, mid, dim) if reuse else None,
            unique_key=self.get(obj, "unique_key", str, null=True),
        )

    def _vector(self, obj: dict[str, Any], mid: str, dim: int) -> bytes | None:
        b64 = self.get(obj, "embedding", str, null=True)
        if b64 is None:
            return None
        try:
            packed = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise self.error(f"embedding of {mid!r} is not base64") from exc
        if len(packed) != 4 * dim:
            raise self.error(
                f"embedding of {mid!r} has {len(packed)} bytes, not the {4 * dim} of "
                f"{dim} float32 the header's embedder makes"
            )
        vec = np.frombuffer(packed, dtype="<f4").astype(np.float32)
        if not np.isfinite(vec).all():
            raise self.error(f"embedding of {mid!r} holds NaN or infinite values")
        return vec.tobytes()


def header(reader: Reader, lines: Iterator[dict[str, Any]]) -> dict[str, Any]:
    """The file's checked header line (the first of ``lines``)."""
    head = next(lines, None)
    if head is None or head.get("type") != "header" or head.get("format") != FORMAT:
        raise reader.error(f"the first line is not a {FORMAT!r} header")
    version = reader.get(head, "version", int)
    if version > FORMAT_VERSION:
        raise ExportFormatError(
            f"{reader.path} uses export format version {version}, newer than this "
            f"helamem-core reads ({FORMAT_VERSION}); upgrade helamem-core"
        )
    reader.get(head, "embedder", dict)
    return head


def export_embedder(path: str | os.PathLike[str]) -> tuple[str, int]:
    """The embedder (name, dimension) an export file's header records.

    Raises:
        ExportFormatError: The file does not start with an export header.
    """
    p = Path(path)
    with p.open(encoding="utf-8") as f:
        reader = Reader(p, f)
        emb = header(reader, iter(reader))["embedder"]
        return str(reader.get(emb, "name", str)), int(reader.get(emb, "dimension", int))


def _spool_error(exc: OSError) -> StorageError:
    """The error of a failed write to the import's temporary vector file (nothing was
    written to the store): :class:`DiskFullError` for a full disk, naming ``TMPDIR``."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(
            f"the disk of the temporary directory ({tempfile.gettempdir()}) is full "
            f"while the import computed its vectors ({exc}); nothing was imported: "
            "free space there (or point TMPDIR elsewhere) and retry"
        )
    return StorageError(f"could not spool the import's vectors: {exc}")


class Spool:
    """The vectors of a file's memory lines, computed before the import's write
    transaction (the file made by another embedder: every vector recomputed, which
    may take minutes with a remote model, while other processes' writes would wait
    for the writer lock and fail after ``busy_timeout``). Kept in file order in a
    temporary file (memory stays flat), each behind a digest of its text, so a file
    changed between the two reads is refused, never given another line's vector."""

    def __init__(self, dimension: int) -> None:
        try:
            self._f = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close())
        except OSError as exc:
            raise _spool_error(exc) from exc
        self._size = 16 + 4 * dimension

    @staticmethod
    def _digest(text: str) -> bytes:
        return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()

    @classmethod
    def compute(
        cls,
        path: Path,
        dimension: int,
        embed: Callable[[list[str]], Any],
        batch: int,
    ) -> Spool:
        """Read ``path`` (checked as the import checks it) and embed every memory's
        text with ``embed`` (``batch`` texts a call).

        Raises:
            ExportFormatError: A line is malformed (nothing is written).
            EmbeddingError: The embedder failed.
            DiskFullError: The temporary directory's disk is full.
        """
        spool = cls(dimension)
        try:
            with path.open(encoding="utf-8", newline="\n") as f:
                reader = Reader(path, f)
                lines = iter(reader)
                header(reader, lines)
                texts: list[str] = []
                for obj in lines:
                    if obj.get("type") == "memory":
                        texts.append(reader.memory(obj, dimension, False).content)
                    if len(texts) >= batch or (texts and obj.get("type") != "memory"):
                        spool._put(texts, embed([safe_text(t) for t in texts]))
                        texts = []
                if texts:
                    spool._put(texts, embed([safe_text(t) for t in texts]))
            try:  # the last buffered vectors reach the disk here: it may be full too
                spool._f.seek(0)
            except OSError as exc:
                raise _spool_error(exc) from exc
        except BaseException:
            spool.close()
            raise
        return spool

    def _put(self, texts: list[str], vectors: Any) -> None:
        try:
            for text, vec in zip(texts, vectors, strict=True):
                self._f.write(self._digest(text) + np.asarray(vec, dtype=np.float32).tobytes())
        except OSError as exc:  # the temporary directory's disk: nothing written to the store
            raise _spool_error(exc) from exc

    def take(self, text: str) -> bytes:
        """The next memory's vector, ``text`` its content.

        Raises:
            InvalidInputError: The file changed since it was read for its vectors.
        """
        rec = self._f.read(self._size)
        if len(rec) != self._size or rec[:16] != self._digest(text):
            raise InvalidInputError(
                "the export file changed while it was imported (its memories differ from "
                "those its vectors were computed for); nothing was imported: import it again"
            )
        return rec[16:]

    def close(self) -> None:
        """Remove the temporary file (what a full disk left unwritten is dropped, never
        raised over the error that ended the import)."""
        with contextlib.suppress(OSError):
            self._f.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
