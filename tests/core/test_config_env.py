"""HelaMemConfig.from_env: each variable is read as documented, and a value it cannot
mean is a ConfigError naming the variable and what it accepts."""

from __future__ import annotations

import pytest

from helamem.core import ConfigError, HelaMemConfig


def test_chroma_variables_are_read() -> None:
    env = {"HELAMEM_CHROMA_HOST": "10.0.0.5", "HELAMEM_CHROMA_PORT": " 8001 "}
    c = HelaMemConfig.from_env({**env, "HELAMEM_CHROMA_SSL": "on"}).chroma
    assert (c.mode, c.host, c.port, c.ssl) == ("http", "10.0.0.5", 8001, True)
    assert HelaMemConfig.from_env({}).chroma.mode == "persistent"


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        *[("1", True), ("true", True), ("YES", True), ("on", True), ("On ", True)],
        *[("0", False), ("false", False), ("No", False), ("off", False)],
    ],
)
def test_ssl_takes_the_usual_booleans(raw: str, want: bool) -> None:
    env = {"HELAMEM_CHROMA_HOST": "db.local", "HELAMEM_CHROMA_SSL": raw}
    assert HelaMemConfig.from_env(env).chroma.ssl is want


@pytest.mark.parametrize(
    ("name", "raw", "accepted"),
    [
        ("HELAMEM_CHROMA_PORT", "8000x", "a number from 1 to 65535"),
        ("HELAMEM_CHROMA_PORT", "0", "a number from 1 to 65535"),
        ("HELAMEM_CHROMA_PORT", "70000", "a number from 1 to 65535"),
        ("HELAMEM_CHROMA_PORT", "-1", "a number from 1 to 65535"),
        ("HELAMEM_CHROMA_PORT", "", "a number from 1 to 65535"),
        ("HELAMEM_CHROMA_SSL", "maybe", "1, true, yes, on (on) or 0, false, no, off (off)"),
        ("HELAMEM_CHROMA_SSL", "", "1, true, yes, on (on)"),
        ("HELAMEM_CHROMA_HOST", "", "host name or address"),
        ("HELAMEM_CHROMA_HOST", "   ", "host name or address"),
        ("HELAMEM_CHROMA_HOST", " db.local", "host name or address"),
        ("HELAMEM_SQLITE_MMAP_MB", "-1", "whole number of MiB from 0 to 2047"),
        ("HELAMEM_SQLITE_MMAP_MB", "2048", "whole number of MiB from 0 to 2047"),
        ("HELAMEM_SQLITE_MMAP_MB", "1.5", "whole number of MiB from 0 to 2047"),
        ("HELAMEM_SQLITE_MMAP_MB", "\u00b2", "whole number of MiB from 0 to 2047"),
        ("HELAMEM_SQLITE_MMAP_MB", "\u0663", "whole number of MiB from 0 to 2047"),
        ("HELAMEM_SQLITE_MMAP_MB", "", "set it to a value"),
    ],
)
def test_a_bad_value_names_its_variable(name: str, raw: str, accepted: str) -> None:
    with pytest.raises(ConfigError) as info:
        HelaMemConfig.from_env({name: raw})
    assert str(info.value).startswith(f"{name}={raw!r} ")
    assert accepted in str(info.value)
    assert isinstance(info.value, ValueError)  # as before: callers catching ValueError still do


@pytest.mark.parametrize(
    ("env", "named", "says"),
    [
        ({"HELAMEM_EMBEDDER": "bogus"}, "HELAMEM_EMBEDDER='bogus'", "'minilm', 'litellm'"),
        ({"HELAMEM_COLLECTION": "a b"}, "HELAMEM_COLLECTION='a b'", "pattern"),
        (
            {"HELAMEM_POSTGRES_DSN": "postgresql://db/x", "HELAMEM_POSTGRES_SCHEMA": "Bad name"},
            "HELAMEM_POSTGRES_SCHEMA='Bad name'",
            "pattern",
        ),
        ({"HELAMEM_PATH": ""}, "HELAMEM_PATH=''", "is empty"),
        ({"HELAMEM_LLM_MODEL": " "}, "HELAMEM_LLM_MODEL=' '", "is empty"),
        ({"HELAMEM_POSTGRES_DSN": ""}, "HELAMEM_POSTGRES_DSN=''", "is empty"),
        ({"HELAMEM_EMBEDDING_MODEL": ""}, "HELAMEM_EMBEDDING_MODEL=''", "is empty"),
        ({"HELAMEM_POSTGRES_SCHEMA": "mem"}, "HELAMEM_POSTGRES_SCHEMA is set without", "DSN"),
        ({"HELAMEM_EMBEDDER": "litellm"}, "HELAMEM_EMBEDDER='litellm' needs", "EMBEDDING_MODEL"),
        ({"HELAMEM_EMBEDDING_MODEL": "m"}, "HELAMEM_EMBEDDING_MODEL is set without", "=litellm"),
        ({"HELAMEM_CHROMA_PORT": "8000"}, "HELAMEM_CHROMA_PORT is set without", "CHROMA_HOST"),
        ({"HELAMEM_CHROMA_SSL": "on"}, "HELAMEM_CHROMA_SSL is set without", "CHROMA_HOST"),
        ({"HELAMEM_LLM_API_BASE": "http://h"}, "HELAMEM_LLM_API_BASE is set without", "LLM_MODEL"),
    ],
)
def test_every_variable_refused_is_a_config_error_naming_it(
    env: dict[str, str], named: str, says: str
) -> None:
    """Not a pydantic ValidationError about a field the user never wrote, and not a
    blank value silently read as the working directory or an empty model name."""
    with pytest.raises(ConfigError) as info:
        HelaMemConfig.from_env(env)
    assert str(info.value).startswith(named)
    assert says in str(info.value)
    assert "unset" in str(info.value)  # the fix: a valid value, or the default


def test_the_other_variables_are_read() -> None:
    env = {
        "HELAMEM_PATH": "/tmp/mem",
        "HELAMEM_EMBEDDER": "hashing",
        "HELAMEM_COLLECTION": "notes",
        "HELAMEM_LLM_MODEL": "ollama/llama3",
        "HELAMEM_LLM_API_BASE": "http://127.0.0.1:11434",
        "HELAMEM_POSTGRES_DSN": "postgresql://db/x",
        "HELAMEM_POSTGRES_SCHEMA": "mem",
        "HELAMEM_SQLITE_MMAP_MB": " 0 ",
    }
    assert HelaMemConfig.from_env({}).sqlite_mmap_mb == 1024
    c = HelaMemConfig.from_env(env, chroma={"collection": "override"})
    assert c.sqlite_mmap_mb == 0
    assert str(c.path) == "/tmp/mem" and c.embedder.provider == "hashing"
    assert (c.llm.model, c.llm.api_base) == ("ollama/llama3", "http://127.0.0.1:11434")
    assert c.chroma.collection == "override"  # overrides win over the environment
    assert c.store.schema_name == "mem"  # type: ignore[union-attr]


def test_a_refused_combination_names_every_variable_given() -> None:
    """No single field at fault (a cross-field check): the message names what was set."""
    env = {"HELAMEM_CHROMA_HOST": "db.local", "HELAMEM_COLLECTION": "notes"}
    HelaMemConfig.from_env(env)  # a valid combination
    from pydantic import BaseModel, model_validator

    from helamem.core import _config_env

    class Strict(BaseModel):
        mode: str = "persistent"
        host: str = "localhost"
        port: int = 8000
        ssl: bool = False
        collection: str = "c"

        @model_validator(mode="after")
        def _no_notes_remotely(self) -> Strict:
            if self.collection == "notes" and self.mode == "http":
                raise ValueError("no notes on a server")
            return self

    with pytest.raises(ConfigError) as info:
        _config_env.read(env, {"chroma": Strict})
    msg = str(info.value)
    assert "HELAMEM_CHROMA_HOST='db.local'" in msg and "HELAMEM_COLLECTION='notes'" in msg
    assert "no notes on a server" in msg and "unset" in msg


def test_a_learning_rate_under_the_pruning_floor_is_refused_naming_the_fix() -> None:
    """Trial: η below ``prune_below`` never built an edge by search (each search pruned
    the edge it met and wrote it again at η); ``learning_rate=0`` still turns it off."""
    from helamem.core import DynamicsConfig

    with pytest.raises(ValueError, match="raise learning_rate or lower prune_below"):
        DynamicsConfig(learning_rate=0.005, prune_below=0.01)
    assert DynamicsConfig(learning_rate=0.0).learning_rate == 0.0
    assert DynamicsConfig(learning_rate=0.01, prune_below=0.01).prune_below == 0.01
