"""Reading :class:`~helamem.core.config.HelaMemConfig` from ``HELAMEM_*`` variables.

The only place the library reads the environment, and only when a caller
invokes :meth:`HelaMemConfig.from_env`. A value the config cannot take is a
:class:`~helamem.core.errors.ConfigError` that names the variable, what it
accepts and that unsetting it restores the default; never a bare pydantic
``ValidationError`` about a field the user never wrote.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from .errors import ConfigError

SQLITE_MMAP_MAX_MB = 2047
"""The largest ``HelaMemConfig.sqlite_mmap_mb``: SQLite caps ``PRAGMA mmap_size``
near 2 GiB (``SQLITE_MAX_MMAP_SIZE``, 0x7fff0000 bytes)."""


def mmap_mb(text: str) -> int | None:
    """``text`` as a ``sqlite_mmap_mb``: ASCII digits, 0 to :data:`SQLITE_MMAP_MAX_MB`
    (``None`` otherwise; the environment and the command line word their own error)."""
    if not (text.isascii() and text.isdigit()) or int(text) > SQLITE_MMAP_MAX_MB:
        return None
    return int(text)


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def read(env: Mapping[str, str], sections: Mapping[str, type[BaseModel]]) -> dict[str, Any]:
    """``HelaMemConfig`` keyword arguments from ``env`` (see ``HelaMemConfig.from_env``).

    Args:
        env: The variables (``os.environ`` or a caller's mapping).
        sections: The config classes by role: ``"embedder"``, ``"chroma"``,
            ``"llm"``, ``"postgres"``.

    Raises:
        ConfigError: A variable is set but empty, or holds a value its field
            refuses, or is set without the one that makes it count (it would be
            ignored): ``HELAMEM_POSTGRES_SCHEMA`` without ``HELAMEM_POSTGRES_DSN``,
            ``HELAMEM_CHROMA_PORT``/``_SSL`` without ``HELAMEM_CHROMA_HOST``,
            ``HELAMEM_LLM_API_BASE`` without ``HELAMEM_LLM_MODEL``,
            ``HELAMEM_EMBEDDING_MODEL`` without ``HELAMEM_EMBEDDER=litellm``.
    """
    data: dict[str, Any] = {}
    if (path := _text(env, "HELAMEM_PATH")) is not None:
        data["path"] = Path(path)
    if (mmap := _text(env, "HELAMEM_SQLITE_MMAP_MB")) is not None:
        if (value := mmap_mb(mmap.strip())) is None:
            raise ConfigError(
                f"HELAMEM_SQLITE_MMAP_MB={mmap!r} is not a whole number of MiB from 0 to "
                f"{SQLITE_MMAP_MAX_MB} (0: reads without a memory map); set it to one, or unset "
                f"it for the default 1024"
            )
        data["sqlite_mmap_mb"] = value
    emb = _fields(env, provider="HELAMEM_EMBEDDER", model="HELAMEM_EMBEDDING_MODEL")
    litellm = emb.get("provider", ("", ""))[1].strip() == "litellm"
    if litellm and "model" not in emb:
        raise ConfigError(
            "HELAMEM_EMBEDDER='litellm' needs HELAMEM_EMBEDDING_MODEL (a LiteLLM embedding "
            "model, e.g. text-embedding-3-small); set it, or unset HELAMEM_EMBEDDER"
        )
    if emb:
        data["embedder"] = _build(sections["embedder"], emb)
    chroma: dict[str, tuple[str, Any]] = {}
    if "HELAMEM_CHROMA_HOST" in env:
        chroma["mode"] = ("HELAMEM_CHROMA_HOST", "http")
        chroma["host"] = ("HELAMEM_CHROMA_HOST", _host(env, "HELAMEM_CHROMA_HOST"))
    if "HELAMEM_CHROMA_PORT" in env:
        chroma["port"] = ("HELAMEM_CHROMA_PORT", _port(env, "HELAMEM_CHROMA_PORT"))
    if "HELAMEM_CHROMA_SSL" in env:
        chroma["ssl"] = ("HELAMEM_CHROMA_SSL", _bool(env, "HELAMEM_CHROMA_SSL"))
    chroma.update(_fields(env, collection="HELAMEM_COLLECTION"))
    if chroma:
        data["chroma"] = _build(sections["chroma"], chroma)
    llm = _fields(env, model="HELAMEM_LLM_MODEL", api_base="HELAMEM_LLM_API_BASE")
    if llm:
        data["llm"] = _build(sections["llm"], llm)
    _needs(
        env, "HELAMEM_EMBEDDING_MODEL", "HELAMEM_EMBEDDER=litellm", "model" not in emb or litellm
    )
    _needs(env, "HELAMEM_CHROMA_PORT", "HELAMEM_CHROMA_HOST", "HELAMEM_CHROMA_HOST" in env)
    _needs(env, "HELAMEM_CHROMA_SSL", "HELAMEM_CHROMA_HOST", "HELAMEM_CHROMA_HOST" in env)
    _needs(env, "HELAMEM_LLM_API_BASE", "HELAMEM_LLM_MODEL", "HELAMEM_LLM_MODEL" in env)
    pg = _fields(env, dsn="HELAMEM_POSTGRES_DSN", schema_name="HELAMEM_POSTGRES_SCHEMA")
    if "schema_name" in pg and "dsn" not in pg:
        raise ConfigError(
            "HELAMEM_POSTGRES_SCHEMA is set without HELAMEM_POSTGRES_DSN, so no PostgreSQL "
            "store would use it; set HELAMEM_POSTGRES_DSN too, or unset HELAMEM_POSTGRES_SCHEMA"
        )
    if pg:
        data["store"] = _build(sections["postgres"], pg)
    return data


def _needs(env: Mapping[str, str], name: str, other: str, present: bool) -> None:
    """``name`` is read only beside ``other``: alone it would be ignored, silently."""
    if name in env and not present:
        raise ConfigError(
            f"{name} is set without {other}, so nothing would read it; set {other} too, "
            f"or unset {name}"
        )


def _text(env: Mapping[str, str], name: str) -> str | None:
    """The variable's value; ``None`` when unset. Set but blank is a mistake, not a default."""
    if name not in env:
        return None
    raw = env[name]
    if not raw.strip():
        raise ConfigError(
            f"{name}={raw!r} is empty; set it to a value, or unset it for the default"
        )
    return raw


def _fields(env: Mapping[str, str], **names: str) -> dict[str, tuple[str, Any]]:
    """``{field: (variable, value)}`` for each of ``names`` (field=variable) that is set."""
    return {f: (v, raw) for f, v in names.items() if (raw := _text(env, v)) is not None}


def _build(cls: type[BaseModel], fields: Mapping[str, tuple[str, Any]]) -> BaseModel:
    """``cls`` from the variables' values; a refused value names its variable, and a
    refused combination (no single field at fault) names every variable given."""
    try:
        return cls(**{f: value for f, (_, value) in fields.items()})
    except ValidationError as e:
        problems = []
        for err in e.errors():
            field = str(err["loc"][0]) if err["loc"] else ""
            msg = _lower(err["msg"]).removeprefix("value error, ")
            if field in fields:
                name, value = fields[field]
                problems.append(f"{name}={value!r} {msg}")
            else:
                given = ", ".join(sorted({f"{n}={v!r}" for n, v in fields.values()}))
                problems.append(f"{given}: together they are refused ({msg})")
        raise ConfigError(
            f"{'; '.join(problems)} (field {cls.__name__}); set values it accepts (the "
            f"variables are listed in HelaMemConfig.from_env), or unset them for the default"
        ) from None


def _lower(msg: str) -> str:
    return msg[:1].lower() + msg[1:] if msg else "is refused"


def _bool(env: Mapping[str, str], name: str) -> bool:
    raw = env[name]
    value = raw.strip().lower()
    if value in _TRUE or value in _FALSE:
        return value in _TRUE
    raise ConfigError(
        f"{name}={raw!r} is not a boolean; set it to one of {', '.join(_TRUE)} (on) or "
        f"{', '.join(_FALSE)} (off)"
    )


def _port(env: Mapping[str, str], name: str) -> int:
    raw = env[name]
    value = raw.strip()
    if not (value.isascii() and value.isdigit() and 1 <= int(value) <= 65535):
        raise ConfigError(f"{name}={raw!r} is not a TCP port; set it to a number from 1 to 65535")
    return int(value)


def _host(env: Mapping[str, str], name: str) -> str:
    raw = env[name]
    if not raw.strip() or raw != raw.strip():
        raise ConfigError(
            f"{name}={raw!r} is not a host name; set it to the Chroma server's host name or "
            f"address (e.g. localhost or 10.0.0.5), or unset it for the embedded store"
        )
    return raw
