"""Facts stay true to the episodes they rest on: answers off the schema, deletes and
overlapping consolidations (interleavings forced by the mock LLM, no sleeps)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from test_distill import S, ScriptedLLM, StoreConfig, _mem, _story, facts_citing_first_labels

from helamem.core import LLMResponseError


@pytest.mark.parametrize("off_schema", ['{"error": "upstream overloaded"}', "{}"])
def test_json_without_facts_is_an_error_and_the_cluster_is_retried(
    tmp_path: Path, store_config: StoreConfig, off_schema: str
) -> None:
    llm = ScriptedLLM(off_schema, off_schema, facts_citing_first_labels)
    with _mem(tmp_path, store_config, llm) as mem:
        _story(mem)
        with pytest.raises(LLMResponseError, match="after one repair"):
            mem.consolidate(S)
        assert len(llm.calls) == 2  # the answer and its repair
        assert mem.stats().semantic == 0
        report = mem.consolidate(S)  # not marked distilled: the same clusters again
        assert llm.calls[2]["messages"] == llm.calls[0]["messages"]
        assert report.facts_added >= 1


def test_an_empty_facts_list_is_nothing_to_distil(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    llm = ScriptedLLM(*['{"facts": []}'] * 5)
    with _mem(tmp_path, store_config, llm) as mem:
        _story(mem)
        first = mem.consolidate(S)
        assert len(llm.calls) == 1 and first.clusters >= 1 and first.facts_added == 0
        mem.consolidate(S)
        # the clusters it saw were recorded: never sent again
        assert all(c["messages"] != llm.calls[0]["messages"] for c in llm.calls[1:])
