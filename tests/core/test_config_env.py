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
    assert HelaMemConfig.from_env({"HELAMEM_CHROMA_SSL": raw}).chroma.ssl is want


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
    ],
)
def test_a_bad_value_names_its_variable(name: str, raw: str, accepted: str) -> None:
    with pytest.raises(ConfigError) as info:
        HelaMemConfig.from_env({name: raw})
    assert str(info.value).startswith(f"{name}={raw!r} ")
    assert accepted in str(info.value)
    assert isinstance(info.value, ValueError)  # as before: callers catching ValueError still do
