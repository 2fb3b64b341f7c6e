"""The scale benchmark's synthetic corpus (seeded agent turns) and its table embedder.

Words are drawn from a Zipf-like distribution so that the full-text index sees
realistic term frequencies.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from helamem.core.embeddings import Embedder, TokenVectors, Vectors, token_embedder

_BLOCK = 1_024


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


_NAMES = _words(
    "Alice Bob Caroline Dev Emma Farid Grace Hiro Ines Jon Kofi Lena Mateo Nadia Omar Priya "
    "Quinn Rosa Sam Tariq Uma Viktor Wen Xavier Yara Zoe Mia Liam Noah Olivia Ava Lucas Ethan "
    "Sofia Mei Arjun Chloe Diego Hana Ivan Jana Kai Leila Marco Nina Oscar Paula Ravi Sara Tom"
)
_NOUNS = _words(
    "trip class meeting recipe book concert dog cat garden bike car job interview project "
    "report presentation marathon race workshop course camera guitar violin piano painting "
    "photo apartment house kitchen birthday party wedding vacation flight hotel museum beach "
    "mountain lake park restaurant cafe bakery market gym yoga team game match movie show "
    "podcast album song festival exhibition conference deadline budget invoice contract laptop "
    "phone app website server database bug release launch sprint review plan schedule doctor "
    "appointment dentist therapy medication diet workout run hike tent kayak surfboard ticket "
    "passport visa apartment lease neighbor roommate landlord sister brother mother father "
    "grandmother cousin friend colleague manager client mentor student teacher puppy kitten "
    "sourdough pasta curry salad soup cake coffee tea wine garden tomato plant seed flower "
    "novel poem essay thesis exam grade scholarship loan mortgage tax refund insurance claim "
    "charity shelter volunteer fundraiser protest election council library archive"
)
_VERBS = _words(
    "visited finished started planned cancelled booked painted cooked read fixed bought sold "
    "adopted joined left moved organized attended missed won lost borrowed returned tried "
    "recommended reviewed shipped deployed debugged designed wrote recorded edited watched "
    "practiced learned taught trained ran hiked climbed baked repaired rented renewed signed "
    "submitted postponed rescheduled celebrated discussed"
)
_ADJS = _words(
    "new old great terrible amazing stressful relaxing expensive cheap long short quick slow "
    "busy quiet noisy beautiful strange funny scary exciting boring important urgent tiny huge "
    "local remote vintage modern cozy rainy sunny cold warm late early first final weekly "
    "monthly annual surprise secret favourite local organic handmade"
)
_PLACES = _words(
    "Berlin Lisbon Paris Tokyo Oslo Nairobi Lima Toronto Denver Austin Seattle Boston Madrid "
    "Rome Vienna Prague Dublin Seoul Mumbai Cairo Sydney Auckland Chicago Portland Kyoto Lagos"
)
_WHEN = (
    "last weekend",
    "yesterday",
    "this morning",
    "on Tuesday evening",
    "after a long week",
    "two days ago",
    "last month",
    "over the holidays",
    "at lunch",
    "before work",
)
_RELATIONS = ("sister", "brother", "friend", "colleague", "neighbor", "manager", "cousin")
_SYLLABLES = _words(
    "ka lo mi ra ven tor bel sha qui zan dro fel ith nor pax lum rin gos tel vo ash mer kin "
    "dal sor bri cae jun wex ol ur"
)

_USER = (
    "I {verb} the {adj} {noun} with {name} {when}.",
    "My {rel} {name} {verb} a {noun} in {place} {when}, and it was {adj}.",
    "Can you remind me what {name} said about the {noun} and {entity}?",
    "We are planning a {noun} in {place} next month; I need a {adj} {noun2}.",
    "Have you heard of {entity}? {name} says the {noun} there is {adj}.",
    "Note that {entity} is the {adj} {noun} {name} {verb} {when}.",
    "I keep thinking about the {noun} with {name}; it felt {adj}.",
    "Please add the {noun} for {entity} to my list, it is {adj}.",
)
_ASSISTANT = (
    "That sounds {adj}! How did the {noun} with {name} go?",
    "Noted: {name} {verb} the {noun} {when}. I will remember {entity}.",
    "You mentioned {entity} before, when you {verb} the {noun}.",
    "Sure. For the {noun} in {place}, you could try a {adj} {noun2}.",
    "I have saved the {adj} {noun} and the {noun2} from {name}.",
    "Got it, {entity} is linked to the {noun} you {verb} {when}.",
)
_QUESTIONS = (
    "What did {name} say about the {noun}?",
    "When did I {verb} the {adj} {noun}?",
    "What do I know about {entity}?",
    "Where was the {noun} with {name}?",
    "Which {noun} did my {rel} mention in {place}?",
    "Tell me about the {adj} {noun} and {entity}.",
)


def _zipf(n: int, s: float = 1.07) -> npt.NDArray[np.float64]:
    w = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** s
    return np.asarray(w / w.sum(), dtype=np.float64)


class Corpus:
    """Seeded generator of agent-conversation turns, questions and recorded turns.

    Every slot word (names, nouns, verbs, adjectives, places, made-up
    entities) is drawn from a Zipf-like distribution (exponent 1.07) over its
    pool, in an order shuffled by the seed, so a few words are everywhere and
    most are rare, as in real conversations. ``turns(n)`` is a prefix of
    ``turns(m)`` for ``n < m``.

    Args:
        seed: Seed of every draw.
        entities: Size of the made-up long tail (pets, products, projects...).
    """

    def __init__(self, seed: int = 0, entities: int = 5_000) -> None:
        self.seed = seed
        rng = np.random.default_rng(seed)
        made_up: dict[str, None] = {}
        syl = np.asarray(_SYLLABLES)
        while len(made_up) < entities:
            parts = rng.integers(0, len(syl), size=(entities, 4))
            lengths = rng.integers(2, 5, size=entities)
            for row, k in zip(parts, lengths, strict=True):
                made_up.setdefault("".join(syl[row[:k]]).capitalize())
                if len(made_up) == entities:
                    break
        self._pools: dict[str, list[str]] = {
            "name": list(_NAMES),
            "noun": list(_NOUNS),
            "noun2": list(_NOUNS),
            "verb": list(_VERBS),
            "adj": list(_ADJS),
            "place": list(_PLACES),
            "when": list(_WHEN),
            "rel": list(_RELATIONS),
            "entity": sorted(made_up),
        }
        for pool in self._pools.values():
            rng.shuffle(pool)
        self._probs = {k: _zipf(len(v)) for k, v in self._pools.items()}

    def _fill(self, rng: np.random.Generator, templates: Sequence[str], n: int) -> list[str]:
        picks = {k: rng.choice(len(v), size=n, p=self._probs[k]) for k, v in self._pools.items()}
        which = rng.integers(0, len(templates), size=n)
        out = []
        for i in range(n):
            slots = {k: self._pools[k][int(picks[k][i])] for k in self._pools}
            out.append(templates[int(which[i])].format(**slots))
        return out

    def turns(self, n: int) -> list[tuple[str, str]]:
        """``n`` turns ``(text, role)``, alternating user and assistant messages."""
        out: list[tuple[str, str]] = []
        for block in range(0, n, _BLOCK):  # blocks of their own seed: prefixes are stable
            rng = np.random.default_rng([self.seed, 1, block])
            users = self._fill(rng, _USER, _BLOCK // 2)
            assistants = self._fill(rng, _ASSISTANT, _BLOCK // 2)
            for i in range(block, min(n, block + _BLOCK)):
                j = (i - block) // 2
                text = users[j] if i % 2 == 0 else assistants[j]
                # a turn number keeps texts (and so vectors) distinct
                out.append((f"{text} (#{i})", "user" if i % 2 == 0 else "assistant"))
        return out

    def questions(self, n: int) -> list[str]:
        """``n`` questions an agent might ask its memory."""
        return self._fill(np.random.default_rng([self.seed, 2]), _QUESTIONS, n)

    def exchanges(self, n: int) -> list[tuple[str, str]]:
        """``n`` new ``(user, assistant)`` turns to record."""
        rng = np.random.default_rng([self.seed, 3])
        users = self._fill(rng, _USER, n)
        answers = self._fill(rng, _ASSISTANT, n)
        pairs = enumerate(zip(users, answers, strict=True))
        return [(f"{u} (rec {i})", f"{a} (rec {i})") for i, (u, a) in pairs]


class TableEmbedder:
    """Looks each text's vector up in a precomputed table (computes only unknown texts).

    It carries the inner embedder's name and dimension, so stores built with
    it hold exactly the inner embedder's vectors.

    Args:
        inner: The embedder that computed the table (and computes misses).
        texts: The texts of the table, one per row of ``vectors``.
        vectors: Their vectors.
        tokens: Give the inner embedder's token vectors (when it has them),
            so stores keep them for late interaction.
        token_texts: Texts whose token vectors are computed now and looked up
            later (the queries: a search then pays for neither of its
            embeddings, as plain Chroma pays for none); the token vectors of
            other texts (the turns stored) are computed when asked for.
    """

    def __init__(
        self,
        inner: Embedder,
        texts: Sequence[str],
        vectors: Vectors,
        *,
        tokens: bool = True,
        token_texts: Sequence[str] = (),
    ) -> None:
        self._inner = inner
        self._token_inner = token_embedder(inner) if tokens else None
        self._row = {t: i for i, t in enumerate(texts)}
        self._vectors = vectors
        self._tokens: dict[str, npt.NDArray[np.float32]] = {}
        if self._token_inner is not None and token_texts:
            unique = list(dict.fromkeys(token_texts))
            _, toks = self._token_inner.embed_with_tokens(unique)
            self._tokens = dict(zip(unique, toks, strict=True))
        self.misses = 0
        """Texts not in the table (computed by the inner embedder)."""

    @property
    def name(self) -> str:
        return self._inner.name

    @property
    def dimension(self) -> int:
        return self._inner.dimension

    @property
    def gives_tokens(self) -> bool:
        """Whether the inner embedder gives token vectors (then so does this one)."""
        return self._token_inner is not None

    def embed_with_tokens(self, texts: Sequence[str]) -> tuple[Vectors, TokenVectors]:
        """The table's vectors, and the inner embedder's token vectors (computed here).

        Raises:
            TypeError: If the inner embedder gives no token vectors.
        """
        if self._token_inner is None:
            raise TypeError(f"this table embedder ({self._inner.name}) gives no token vectors")
        if all(t in self._tokens for t in texts):  # the queries: precomputed
            return self.embed(texts), [self._tokens[t] for t in texts]
        _, toks = self._token_inner.embed_with_tokens(texts)
        return self.embed(texts), toks

    def vector(self, text: str) -> npt.NDArray[np.float32]:
        """The table's vector of ``text`` (a ``KeyError`` when absent)."""
        return np.asarray(self._vectors[self._row[text]], dtype=np.float32)

    def embed(self, texts: Sequence[str]) -> Vectors:
        rows = [self._row.get(t, -1) for t in texts]
        if all(r >= 0 for r in rows):
            return np.asarray(self._vectors[rows], dtype=np.float32)
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        missing = [i for i, r in enumerate(rows) if r < 0]
        self.misses += len(missing)
        out[missing] = self._inner.embed([texts[i] for i in missing])
        hit = [i for i, r in enumerate(rows) if r >= 0]
        if hit:
            out[hit] = self._vectors[[rows[i] for i in hit]]
        return out


# -- measurement helpers -----------------------------------------------------
