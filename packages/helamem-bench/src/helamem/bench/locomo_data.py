"""LoCoMo data: the file format, its conversations, turns, questions and evidence ids.

Loaded by :func:`load_locomo`; shared by the retrieval run (:mod:`.locomo`), the QA
mode (:mod:`.qa`), the agent-loop replay and the report.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from helamem.core import NewMemory

CATEGORIES: dict[int, str] = {
    1: "multi-hop",
    2: "temporal",
    3: "open-domain",
    4: "single-hop",
    5: "adversarial",
}
"""LoCoMo question categories, numbered as in the official evaluation code."""

DEFAULT_KS: tuple[int, ...] = (5, 10, 20)
BUDGETS: tuple[int, ...] = (256, 512, 1024)
"""Context budgets (tokens) at which every method is also scored: ``R@256t`` etc."""
_BUDGET_K = 60  # hits fetched to fill the largest budget (LoCoMo turns: ~36 tokens each)

_EVIDENCE = re.compile(r"D:?(\d+):(\d+)")
_SEPARATORS = re.compile(r"[;,\s]+")
_SESSION = re.compile(r"session_(\d+)")
_DATE_FORMATS = ("%I:%M %p on %d %B, %Y", "%I:%M %p on %d %b, %Y", "%d %B, %Y", "%d %B %Y")


LOOP_K = 5
"""``k`` of the agent loop's search for each turn pair's first message."""


class LocomoFormatError(ValueError):
    """The file is not in the LoCoMo (``locomo10.json``) schema."""


@dataclass(frozen=True, slots=True)
class Turn:
    """One conversation turn, as stored.

    Attributes:
        dia_id: LoCoMo's turn id, e.g. ``"D1:3"``.
        content: ``"speaker: text"`` plus ``" [image: caption]"``.
        event_time: The date of the turn's session.
        speaker: Who spoke it (``""``: not given).
    """

    dia_id: str
    content: str
    event_time: datetime
    speaker: str = ""

    def memory(self, scope: tuple[str, ...]) -> NewMemory:
        """The turn as the benchmarks store it: its content, with the speaker as
        ``role`` (so ``selection="learned"`` sees who a question names) and the
        LoCoMo turn id as ``metadata["dia_id"]``."""
        return NewMemory(
            self.content,
            scope,
            role=self.speaker or None,
            event_time=self.event_time,
            metadata={"dia_id": self.dia_id},
        )


@dataclass(frozen=True, slots=True)
class Question:
    """One question with its parsed evidence.

    Attributes:
        index: Position in the conversation's ``qa`` list.
        text: The question.
        category: 1-5 (see :data:`CATEGORIES`).
        evidence: Evidence turn ids that exist in the conversation.
    """

    index: int
    text: str
    category: int
    evidence: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Conversation:
    """One LoCoMo sample.

    Attributes:
        sample_id: E.g. ``"conv-26"``.
        turns: Every turn, in session order.
        questions: Every question with usable evidence, in file order.
        reference_time: The last session's date ("now" for the questions).
    """

    sample_id: str
    turns: tuple[Turn, ...]
    questions: tuple[Question, ...]
    reference_time: datetime


@dataclass(slots=True)
class EvidenceReport:
    """What the loader did with the evidence lists.

    Attributes:
        entries: Evidence strings read.
        ok: Well-formed ids of turns that exist.
        split: Strings holding several ids (``"D8:6; D9:17"``), split.
        repaired: Ids normalised (``"D:11:26"`` → ``"D11:26"``,
            ``"D30:05"`` → ``"D30:5"``).
        skipped_unparseable: Strings (or parts) that are no turn id (``"D"``).
        skipped_unknown: Well-formed ids of turns the conversation lacks.
        questions_without_evidence: Questions left with no usable evidence
            (not scored).
        unparsed_dates: Session dates that could not be parsed (the previous
            session's date was used).
        examples: A few raw strings per kind of problem.
    """

    entries: int = 0
    ok: int = 0
    split: int = 0
    repaired: int = 0
    skipped_unparseable: int = 0
    skipped_unknown: int = 0
    questions_without_evidence: int = 0
    unparsed_dates: int = 0
    examples: dict[str, list[str]] = field(default_factory=dict)

    def note(self, kind: str, raw: str) -> None:
        """Remember ``raw`` as an example of ``kind`` (at most 10 each).

        Args:
            kind: The problem, e.g. ``"split"``.
            raw: The string as found in the file.
        """
        seen = self.examples.setdefault(kind, [])
        if len(seen) < 10 and raw not in seen:
            seen.append(raw)

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        return {
            "entries": self.entries,
            "ok": self.ok,
            "split": self.split,
            "repaired": self.repaired,
            "skipped_unparseable": self.skipped_unparseable,
            "skipped_unknown": self.skipped_unknown,
            "questions_without_evidence": self.questions_without_evidence,
            "unparsed_dates": self.unparsed_dates,
            "examples": self.examples,
        }


def parse_evidence(raw: str) -> tuple[list[str], str | None]:
    """Parse one evidence string into normalised turn ids.

    Args:
        raw: An entry of a question's ``evidence`` list.

    Returns:
        ``(ids, problem)``: the ids found, and ``None`` when ``raw`` was one
        well-formed id, ``"split"`` when it held several, ``"repaired"`` when
        an id had to be normalised, ``"unparseable"`` when no id was found.

    Examples:
        >>> parse_evidence("D1:3")
        (['D1:3'], None)
        >>> parse_evidence("D30:05")
        (['D30:5'], 'repaired')
        >>> parse_evidence("D")
        ([], 'unparseable')
    """
    parts = [p for p in _SEPARATORS.split(raw.strip()) if p]
    ids: list[str] = []
    repaired = False
    for part in parts:
        m = _EVIDENCE.fullmatch(part)
        if m is None:
            repaired = True
            continue
        norm = f"D{int(m.group(1))}:{int(m.group(2))}"
        repaired = repaired or norm != part
        ids.append(norm)
    if not ids:
        return [], "unparseable"
    if len(parts) > 1:
        return ids, "split"
    return ids, "repaired" if repaired else None


def parse_session_date(text: str) -> datetime | None:
    """Parse a LoCoMo session date such as ``"1:56 pm on 8 May, 2023"`` (UTC).

    Args:
        text: The ``session_N_date_time`` value.

    Returns:
        The date, or ``None`` when it is in no known format.

    Examples:
        >>> parse_session_date("1:56 pm on 8 May, 2023")
        datetime.datetime(2023, 5, 8, 13, 56, tzinfo=datetime.timezone.utc)
    """
    clean = " ".join(text.split())
    for fmt in _DATE_FORMATS:
        try:
            return datetime.strptime(clean, fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
    return None


def _turn_content(turn: Mapping[str, Any]) -> str:
    text = f"{turn.get('speaker', '?')}: {turn.get('text', '')}"
    caption = turn.get("blip_caption")
    if isinstance(caption, str) and caption.strip():
        text += f" [image: {caption.strip()}]"
    return text


def _conversation(sample: Any, report: EvidenceReport) -> Conversation:
    if not isinstance(sample, dict) or not isinstance(sample.get("conversation"), dict):
        raise LocomoFormatError("every sample needs a 'conversation' object")
    sample_id = str(sample.get("sample_id", "?"))
    conv = sample["conversation"]
    sessions = sorted(
        (int(m.group(1)), key)
        for key, value in conv.items()
        if (m := _SESSION.fullmatch(key)) and isinstance(value, list)
    )
    turns: list[Turn] = []
    previous = datetime(2000, 1, 1, tzinfo=UTC)
    for _, key in sessions:
        when = parse_session_date(str(conv.get(f"{key}_date_time", "")))
        if when is None:
            report.unparsed_dates += 1
            report.note("unparsed_date", f"{sample_id} {key}: {conv.get(f'{key}_date_time')!r}")
            when = previous
        previous = when
        for turn in conv[key]:
            if not isinstance(turn, dict) or "dia_id" not in turn:
                raise LocomoFormatError(f"{sample_id} {key}: a turn without 'dia_id'")
            speaker = turn.get("speaker")
            turns.append(
                Turn(
                    str(turn["dia_id"]),
                    _turn_content(turn),
                    when,
                    speaker.strip() if isinstance(speaker, str) else "",
                )
            )
    if not turns:
        raise LocomoFormatError(f"{sample_id}: no sessions with turns")
    known = {t.dia_id for t in turns}
    questions: list[Question] = []
    for index, qa in enumerate(sample.get("qa", [])):
        evidence: list[str] = []
        for raw in qa.get("evidence", []):
            report.entries += 1
            ids, problem = parse_evidence(str(raw))
            if problem == "unparseable":
                report.skipped_unparseable += 1
                report.note("unparseable", str(raw))
                continue
            if problem is not None:
                setattr(report, problem, getattr(report, problem) + 1)
                report.note(problem, str(raw))
            for i in ids:
                if i in known:
                    if problem is None:
                        report.ok += 1
                    if i not in evidence:
                        evidence.append(i)
                else:
                    report.skipped_unknown += 1
                    report.note("unknown", f"{sample_id}: {i}")
        if not evidence:
            report.questions_without_evidence += 1
            continue
        questions.append(
            Question(
                index, str(qa.get("question", "")), int(qa.get("category", 0)), tuple(evidence)
            )
        )
    return Conversation(sample_id, tuple(turns), tuple(questions), previous)


def load_locomo(path: Path) -> tuple[list[Conversation], EvidenceReport]:
    """Read a LoCoMo file.

    Args:
        path: A JSON file in the ``locomo10.json`` schema.

    Returns:
        The conversations and what was done with malformed evidence.

    Raises:
        LocomoFormatError: When the file is not LoCoMo-shaped.
        OSError: When it cannot be read.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise LocomoFormatError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, list):
        raise LocomoFormatError(f"{path}: expected a list of samples")
    report = EvidenceReport()
    return [_conversation(s, report) for s in data], report
