"""Supplement-name normalisation: the lexicon first, then the nearest entry by embedding.

The lexicon is the project's ``data/lexicon/supplements.tsv`` (when present) extended with
every (surface, normalised name) pair of the training corpus, so each name the model was
trained on normalises exactly. A surface neither knows is embedded with the base sentence
encoder (mean pooling) and mapped to the closest known surface above a similarity floor;
below it the lower-cased surface is kept, so a new product is never forced onto a wrong name
(MiniLM similarities of unrelated short names reach ~0.8: "vitamins" ~ "Vitamin A").
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from extraction.corpus import Record
from extraction.embedding import SentenceEmbedder
from extraction.lexicon import Lexicon, LexiconEntry

log = logging.getLogger(__name__)
Embed = Callable[[Sequence[str]], np.ndarray]  # texts -> L2-normalised rows
SIMILARITY_FLOOR = 0.85


def corpus_names(records: Iterable[Record]) -> dict[str, str]:
    """Surface (as written) -> normalised name, from gold supplement mentions."""
    out: dict[str, str] = {}
    for rec in records:
        for ent in rec.supplements:
            if ent.normalized:
                out.setdefault(ent.text, ent.normalized)
    return out


def merged_lexicon(base: Lexicon | None, names: Mapping[str, str]) -> Lexicon:
    """The project lexicon plus corpus surfaces as extra synonyms of their names."""
    entries = dict(base.entries) if base is not None else {}
    extra: dict[str, list[str]] = {}
    for surface, name in names.items():
        extra.setdefault(name, []).append(surface)
    for name, surfaces in extra.items():
        if name in entries:
            entry = entries[name]
            entries[name] = dataclasses.replace(entry, synonyms=(*entry.synonyms, *surfaces))
        else:
            entries[name] = LexiconEntry(name, "", tuple(surfaces), (), (), "", "", "")
    return Lexicon(list(entries.values()))


class LazyEmbedder:
    """Sentence embeddings (``extraction.embedding``), the model loaded on first use only:
    most mentions normalise through the lexicon and never need it."""

    def __init__(self, model_dir: Path | None) -> None:
        self.model_dir = model_dir
        self._embedder: SentenceEmbedder | None = None
        self._lock = threading.Lock()

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            if self._embedder is None:
                self._embedder = SentenceEmbedder(self.model_dir)
        return self._embedder.encode(list(texts))


class Normalizer:
    """surface -> normalised name (always returns one).

    ``cache``: an ``.npz`` of the lexicon-surface vectors, reused while the lexicon's
    surfaces are unchanged (embedding them all costs seconds on a CPU).
    """

    def __init__(
        self,
        lexicon: Lexicon,
        embed: Embed | None,
        floor: float = SIMILARITY_FLOOR,
        cache: Path | None = None,
    ) -> None:
        self.lexicon = lexicon
        self.embed = embed
        self.floor = floor
        self.cache = cache
        self._index: tuple[list[str], np.ndarray] | None = None

    def index(self) -> tuple[list[str], np.ndarray]:
        """Known surfaces and their vectors (from the cache when it matches)."""
        if self._index is not None:
            return self._index
        assert self.embed is not None
        surfaces = sorted({s for e in self.lexicon.entries.values() for s in e.surfaces})
        cached = self._cached(surfaces)
        if cached is not None:
            self._index = (surfaces, cached)
            return self._index
        self._index = (surfaces, self.embed(surfaces))
        if self.cache is not None:
            # Worker processes may rebuild it at once: write aside, then rename (atomic).
            tmp = self.cache.with_name(f".{self.cache.name}.{os.getpid()}.tmp.npz")
            try:
                np.savez(tmp, surfaces=np.array(surfaces), vectors=self._index[1])
                os.replace(tmp, self.cache)
            except OSError as exc:  # a read-only model directory only costs the rebuild
                log.warning("cannot write the normalisation cache %s: %s", self.cache, exc)
                tmp.unlink(missing_ok=True)
        return self._index

    def _cached(self, surfaces: list[str]) -> np.ndarray | None:
        """The cached vectors if the cache holds exactly ``surfaces`` (a damaged cache is
        rebuilt, not fatal)."""
        if self.cache is None or not self.cache.is_file():
            return None
        try:
            with np.load(self.cache, allow_pickle=False) as data:
                if data["surfaces"].tolist() == surfaces:
                    return np.asarray(data["vectors"], dtype=np.float32)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            log.warning("ignoring an unreadable normalisation cache %s: %s", self.cache, exc)
        return None

    def _nearest(self, surface: str) -> str | None:
        if self.embed is None:
            return None
        surfaces, matrix = self.index()
        sims = matrix @ self.embed([surface])[0]
        best = int(np.argmax(sims))
        if sims[best] < self.floor:
            return None
        return self.lexicon.normalize(surfaces[best], fuzzy=False)

    def resolve(self, surface: str) -> tuple[str, bool]:
        """(name, known): known is False when only the lower-cased surface is left."""
        name = self.lexicon.normalize(surface) or self._nearest(surface)
        if name is not None:
            return name, True
        return " ".join(surface.lower().split()), False

    def __call__(self, surface: str) -> str:
        return self.resolve(surface)[0]
