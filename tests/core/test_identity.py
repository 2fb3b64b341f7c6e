"""``store_key``: one key per store whatever the DSN's spelling (review 162: the AutoGen
adapter keyed peers by the raw DSN, so memories on one database given it with and
without a password or ``sslmode`` did not wait for each other's turns)."""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr

from helamem.core import HelaMemConfig, PostgresConfig
from helamem.core.identity import store_key


def _at(path: Path, dsn: str, schema: str = "helamem") -> HelaMemConfig:
    return HelaMemConfig(path=path, store=PostgresConfig(dsn=SecretStr(dsn), schema_name=schema))


def test_one_database_spelled_two_ways_is_one_store(tmp_path: Path) -> None:
    plain = _at(tmp_path, "postgresql://app@db/agents")
    assert store_key(plain) == store_key(_at(tmp_path, "postgresql://app:s3cret@db:5432/agents"))
    assert store_key(plain) == store_key(
        _at(tmp_path, "host=db user=app dbname=agents sslmode=require")
    )
    assert "s3cret" not in store_key(_at(tmp_path, "postgresql://app:s3cret@db/agents"))


def test_another_database_schema_or_path_is_another_store(tmp_path: Path) -> None:
    plain = store_key(_at(tmp_path, "postgresql://app@db/agents"))
    assert plain != store_key(_at(tmp_path, "postgresql://app@db/other"))
    assert plain != store_key(_at(tmp_path, "postgresql://bob@db/agents"))
    assert plain != store_key(_at(tmp_path, "postgresql://app@db/agents", schema="tenant_b"))
    assert plain != store_key(_at(tmp_path / "x", "postgresql://app@db/agents"))
    assert store_key(HelaMemConfig(path=tmp_path)) == str(tmp_path.absolute())
