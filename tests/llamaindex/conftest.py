"""Fixtures for the LlamaIndex adapter: hermetic, serializable stores and a spy recorder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from li_fakes import SpyRecorder, hashing_config

from helamem.core import HelaMemory


@pytest.fixture
def store(tmp_path: Path) -> Iterator[HelaMemory]:
    mem = HelaMemory(hashing_config(tmp_path / "store"))
    yield mem
    mem.close()


@pytest.fixture
def spy(store: HelaMemory) -> Iterator[SpyRecorder]:
    rec = SpyRecorder(store)
    yield rec
    rec.close_sync()
