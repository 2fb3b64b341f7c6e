"""Switching a store's embedder: every memory re-embedded, crash-safely.

SQLite's ``meta`` table records the embedder every stored vector belongs to
(key ``embedder``: ``{"name", "dimension"}``). A switch to another embedder
first records its target (key ``embedder.switch``: ``{"name", "dimension",
"done_n"}``), then re-embeds the memories in key order, one transaction per
batch that rewrites the batch's vectors and advances ``done_n`` together.
When every vector is rewritten, the derived vector index is rebuilt from
them, and one last transaction records the new embedder and drops the switch
record.

A process killed (or an embedder failing) half-way leaves the switch record:
the store then opens only to finish the switch (same target: it resumes
after ``done_n``), to restart it towards another embedder, or to switch back
(which re-embeds everything); any other open is refused with a
:class:`~helamem.core.errors.ConfigError` naming the command that finishes it.

Other processes should close the store before a switch: one that opened it
before the switch began is refused every write of vectors once the switch is
recorded (:func:`refuse_switched`, in the write transaction: its vectors, of the
old embedder, would not match the others; before, it stored them and dense
search never found those memories), and its searches (:func:`refuse_switched_search`:
its query vectors match none stored, so the dense leg found nothing, silently).
"""

from __future__ import annotations

import json
import logging
import shlex
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import EmbedderConfig
from .embeddings import MiniLMEmbedder
from .errors import ConfigError

if TYPE_CHECKING:
    from ._base import CoreBase

__all__ = [
    "EMBEDDER_KEY",
    "SWITCH_KEY",
    "cli_flags",
    "embedder_config",
    "parse_record",
    "ensure_embedder",
    "read_embedder",
    "read_switch",
    "refuse_switched",
    "refuse_switched_search",
    "stored_embedder",
]

logger = logging.getLogger(__name__)

EMBEDDER_KEY = "embedder"
SWITCH_KEY = "embedder.switch"
BATCH = 256


def parse_record(raw: str | None) -> dict[str, Any] | None:
    """An embedder record (meta ``embedder`` or ``embedder.switch``) as a dict; ``None``
    when missing or unreadable."""
    if raw is None:
        return None
    try:
        info = json.loads(raw)
    except json.JSONDecodeError:
        return None
    return info if isinstance(info, dict) else None


def read_embedder(core: CoreBase) -> dict[str, Any] | None:
    """``{"name", "dimension"}`` of the embedder the stored vectors belong to."""
    return parse_record(core.store.get_meta(EMBEDDER_KEY))


def refuse_switched(
    core: CoreBase,
    *,
    finishing: bool = False,
    done: str = "nothing was written, as its vectors would not match the others",
) -> None:
    """In a write transaction (under the writer lock): refuse to store vectors of an
    embedder the store no longer records, as another process switched it (or is
    switching it) since this one opened the store.

    ``finishing``: a switch recorded towards this memory's embedder is this memory's
    own (only the memory doing it opens the store then), which writes and indexes the
    target's vectors: accepted (re-indexing, not new memories). ``done``: what the
    message says of the refused call.

    Raises:
        ConfigError: The store's embedder is not this memory's, or a switch is under
            way; nothing is written (the transaction rolls back).
    """
    _refuse_other_embedder(core, done, finishing=finishing)


SWITCH_CHECK_S = 1.0
"""How often (seconds, at most) a search reads the store's embedder record
(:func:`refuse_switched_search`): a switch is an operator's rare step."""


def refuse_switched_search(core: CoreBase) -> None:
    """Before a search: refuse it once another process switched the store's embedder
    (or is switching it to another one) since this memory opened the store, as its
    query vectors match no stored vector: the dense leg would find nothing, silently.
    Read at most every :data:`SWITCH_CHECK_S` seconds.

    Raises:
        ConfigError: As :func:`refuse_switched`; nothing was searched.
    """
    now = time.monotonic()
    if now - core._switch_checked < SWITCH_CHECK_S:
        return
    _refuse_other_embedder(
        core, "nothing was searched, as its query vectors match none stored", finishing=True
    )
    core._switch_checked = now


def _refuse_other_embedder(core: CoreBase, outcome: str, *, finishing: bool = False) -> None:
    rec = core.store.get_metas((EMBEDDER_KEY, SWITCH_KEY))
    stored, switch = parse_record(rec.get(EMBEDDER_KEY)), parse_record(rec.get(SWITCH_KEY))
    name, dim = core.embedder.name, int(core.embedder.dimension)
    if stored is None:
        return  # no record yet: the open writes it
    if switch is None and _same(stored, name, dim):
        return
    if finishing and switch is not None and _same(switch, name, dim):
        return  # the switch is to this memory's embedder (its own, or one resuming it)
    to = switch or stored
    raise ConfigError(
        f"another process {'is switching' if switch else 'switched'} this store's embedder "
        f"to {to.get('name')!r} (dimension {to.get('dimension')}) after this memory opened "
        f"it with {name!r} (dimension {dim}): {outcome}. Close this memory and open the "
        f"store again with the {to.get('name')!r} embedder (HelaMemory(config, "
        f"embedder=<it>))"
    )


def _same(record: dict[str, Any], name: str, dim: int) -> bool:
    """Whether an embedder record (``{"name", "dimension"}``) names this embedder."""
    try:
        return record.get("name") == name and int(record.get("dimension", 0)) == dim
    except (TypeError, ValueError):  # a dimension that is no number: another's
        return False


def read_switch(core: CoreBase) -> dict[str, Any] | None:
    """``{"name", "dimension", "done_n"}`` of an unfinished switch, or ``None``."""
    return parse_record(core.store.get_meta(SWITCH_KEY))


def embedder_config(name: str, dimension: int) -> EmbedderConfig | None:
    """The :class:`EmbedderConfig` that builds the embedder named ``name``, if any.

    ``None`` for an embedder passed as an object (a Chroma embedding function,
    a custom :class:`~helamem.core.embeddings.Embedder`): only code can build it.
    """
    if name == MiniLMEmbedder.NAME and dimension == 384:
        return EmbedderConfig(provider="minilm")
    if name.startswith("hashing-") and name[len("hashing-") :] == str(dimension):
        return EmbedderConfig(provider="hashing", dimension=dimension)
    if name.startswith("litellm:") and len(name) > len("litellm:"):
        return EmbedderConfig(
            provider="litellm", model=name[len("litellm:") :], dimension=dimension
        )
    return None


def cli_flags(name: str, dimension: int) -> str | None:
    """The ``helamem`` options that choose this embedder (``--embedder minilm``...)."""
    cfg = embedder_config(name, dimension)
    if cfg is None:
        return None
    if cfg.provider == "minilm":
        return "--embedder minilm"
    if cfg.provider == "hashing":
        return f"--embedder hashing --dimension {dimension}"
    return f"--embedder litellm --model {cfg.model} --dimension {dimension}"


def _fix(core: CoreBase, name: str, dimension: int) -> str:
    if core.config.store is not None:  # no CLI for a PostgreSQL store
        return f"HelaMemory(config, embedder=<the {name!r} embedder>, reembed=True)"
    flags = cli_flags(name, dimension)
    where = shlex.quote(str(core.config.path))
    cli = f"`helamem reindex --reembed {flags} {where}` or " if flags else ""
    return (
        f"{cli}HelaMemory.from_path({str(core.config.path)!r}, config, "
        f"embedder=<the {name!r} embedder>, reembed=True)"
    )


def ensure_embedder(core: CoreBase, reembed: bool) -> int | None:
    """Check (or, with ``reembed``, switch to) the store's embedder, on open.

    Returns:
        ``None`` when nothing was switched, else the memories re-embedded.

    Raises:
        ConfigError: The store's vectors belong to another embedder (or a
            switch was interrupted) and ``reembed`` is false; the message
            names the command that switches (or finishes the switch).
        EmbeddingError: The new embedder failed; the switch stays recorded
            and resumes on the next open with ``reembed=True``.
    """
    name, dim = core.embedder.name, int(core.embedder.dimension)
    target = {"name": name, "dimension": dim}
    stored = read_embedder(core)
    if stored is None:
        other = core.store.db.execute(
            "SELECT length(embedding) FROM memories WHERE embedding IS NOT NULL"
            " AND length(embedding) <> ? LIMIT 1",
            (4 * dim,),
        ).fetchone()
        if other is not None and reembed:  # asked to re-embed: switch from the unknown
            unknown = {"name": "an unrecorded embedder", "dimension": int(other[0]) // 4}
            return _switch(core, unknown, read_switch(core), target)
        if other is not None:  # its record lost: not this embedder's vectors
            raise ConfigError(
                f"this store records no embedder, but its memories hold vectors of "
                f"dimension {int(other[0]) // 4}, not {dim} ({name!r}): open it with an "
                f"embedder of dimension {int(other[0]) // 4} (the one that made them; it is "
                f"then recorded), or re-embed every memory with this one: reembed=True "
                f"({_fix(core, name, dim)})"
            )
        with core.store.tx() as db:
            core.store.set_meta(db, EMBEDDER_KEY, json.dumps(target))
        return None
    switch = read_switch(core)
    if switch is None and _same(stored, name, dim):
        return None
    if not reembed:
        if switch is not None:
            total = int(core.store.db.execute("SELECT COUNT(*) FROM memories").fetchone()[0])
            done = int(
                core.store.db.execute(
                    "SELECT COUNT(*) FROM memories WHERE n <= ?", (int(switch.get("done_n", 0)),)
                ).fetchone()[0]
            )
            raise ConfigError(
                f"a switch of this store's embedder from {stored.get('name')!r} to "
                f"{switch.get('name')!r} (dimension {switch.get('dimension')}) was interrupted "
                f"after {done} of {total} memories; finish it with "
                f"{_fix(core, str(switch.get('name')), int(switch.get('dimension', 0)))}"
            )
        raise ConfigError(
            f"this store was built with embedder {stored.get('name')!r} "
            f"(dimension {stored.get('dimension')}), not {name!r} ({dim}); open it with the "
            f"same embedder (HelaMemory(config, embedder=...); an adapter loaded from a dump: "
            f"register_memory(HelaMemory(config, embedder=...)) for LlamaIndex, "
            f"HelaMemMemory(config, embedder=...) for AutoGen), or switch it to {name!r} by "
            f"re-embedding every memory: {_fix(core, name, dim)}"
        )
    return _switch(core, stored, switch, target)


def _switch(
    core: CoreBase,
    stored: dict[str, Any],
    switch: dict[str, Any] | None,
    target: dict[str, Any],
) -> int:
    store = core.store
    resume = (
        switch is not None
        and switch.get("name") == target["name"]
        and int(switch.get("dimension", 0)) == target["dimension"]
    )
    done_n = int(switch.get("done_n", 0)) if resume and switch is not None else 0
    if not resume:
        with store.tx() as db:
            store.set_meta(db, SWITCH_KEY, json.dumps({**target, "done_n": 0}))
    total = int(store.db.execute("SELECT COUNT(*) FROM memories").fetchone()[0])
    done = int(
        store.db.execute("SELECT COUNT(*) FROM memories WHERE n <= ?", (done_n,)).fetchone()[0]
    )
    logger.warning(
        "switching the embedder of %s from %r to %r: re-embedding %d of %d memories",
        core.config.path,
        stored.get("name"),
        target["name"],
        total - done,
        total,
    )
    count = 0
    next_log = 0.1
    while True:
        rows = store.db.execute(
            "SELECT n, content FROM memories WHERE n > ? ORDER BY n LIMIT ?", (done_n, BATCH)
        ).fetchall()
        if not rows:
            break
        vecs = core._embed([str(r[1]) for r in rows])
        done_n = int(rows[-1][0])
        with store.tx() as db:
            db.executemany(
                "UPDATE memories SET embedding = ?, indexed = 0 WHERE n = ?",
                [(v.tobytes(), int(r[0])) for r, v in zip(rows, vecs, strict=True)],
            )
            # token vectors of the old model: dropped, refilled lazily by searches
            db.executemany("DELETE FROM token_vectors WHERE n = ?", [(int(r[0]),) for r in rows])
            store.vectors_rewritten(db)
            store.set_meta(db, SWITCH_KEY, json.dumps({**target, "done_n": done_n}))
        count += len(rows)
        done += len(rows)
        if total and done / total >= next_log:
            logger.info("re-embedded %d of %d memories", done, total)
            next_log = done / total + 0.1
    # the derived index drops the old vectors (possibly of another dimension) and
    # takes the new ones; a kill here leaves the switch recorded: it runs again
    logger.info("rebuilding the vector index with the new vectors")
    core.index.open(target["dimension"])
    try:
        indexed = core.reindex(False)
    finally:
        core.index.close()
    with store.tx() as db:
        store.set_meta(db, EMBEDDER_KEY, json.dumps(target))
        db.execute("DELETE FROM meta WHERE key = ?", (SWITCH_KEY,))
    logger.warning(
        "embedder of %s switched to %r (%d memories re-embedded, %d indexed)",
        core.config.path,
        target["name"],
        count,
        indexed,
    )
    return count


def stored_embedder(path: str | Path) -> tuple[str, int, dict[str, Any] | None] | None:
    """``(name, dimension, switch)`` recorded in the store at ``path``, or ``None``.

    ``switch`` is the unfinished embedder switch (``{"name", "dimension",
    "done_n"}``) or ``None``. Reads only; ``None`` when the store has no
    recorded embedder yet.

    Raises:
        InvalidInputError: There is no store at ``path``.
        StorageError: The database cannot be read (e.g. corrupt).
    """
    from ._check_report import store_file
    from .storage.sqlite import sqlite_errors
    from .storage.sqlite_schema import connect_existing

    db_path = store_file(path)
    with (
        sqlite_errors(db_path, "cannot read the store's embedder"),
        closing(connect_existing(db_path)) as db,
    ):
        info, switch = records(db)
    if info is None:
        return None
    return str(info.get("name")), int(info.get("dimension", 0)), switch


def records(db: sqlite3.Connection) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The embedder record and the unfinished switch's (:func:`parse_record` each) in
    the store database ``db`` (one read; ``None`` each in a database without ``meta``).

    Raises:
        sqlite3.DatabaseError: The database cannot be read.
    """
    if not db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
    ).fetchone():
        return None, None
    meta = dict(
        db.execute(
            "SELECT key, value FROM meta WHERE key IN (?, ?)", (EMBEDDER_KEY, SWITCH_KEY)
        ).fetchall()
    )
    return parse_record(meta.get(EMBEDDER_KEY)), parse_record(meta.get(SWITCH_KEY))
