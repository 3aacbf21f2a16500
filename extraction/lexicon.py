"""The supplement lexicon: canonical names, synonyms, brands, misspellings and public codes.

File format (``data/lexicon/supplements.tsv``, UTF-8, tab-separated, header row)::

    normalized  category  synonyms  brands  misspellings  rxcui  unii  code_source

List cells are ``|``-separated. Codes are empty unless checked against the named source.
"""

from __future__ import annotations

import csv
import difflib
import re
from dataclasses import dataclass
from pathlib import Path

from extraction.errors import ExtractionError

COLUMNS = (
    "normalized",
    "category",
    "synonyms",
    "brands",
    "misspellings",
    "rxcui",
    "unii",
    "code_source",
)
# Words that can trail a name without changing the ingredient ("fish oil capsules").
_FORM_WORDS = re.compile(
    r"\b(supplements?|capsules?|caps|tablets?|tabs?|softgels?|gummies|gummy|drops|liquid|"
    r"powder|chewables?|extract|oral|po|otc|daily|high[- ]dose)\b"
)


@dataclass(frozen=True)
class LexiconEntry:
    normalized: str
    category: str
    synonyms: tuple[str, ...]
    brands: tuple[str, ...]
    misspellings: tuple[str, ...]
    rxcui: str
    unii: str
    code_source: str

    @property
    def surfaces(self) -> tuple[str, ...]:
        return (self.normalized, *self.synonyms, *self.brands, *self.misspellings)


def _cells(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split("|") if v.strip())


def _key(text: str) -> str:
    """Lookup key: lower case, punctuation and hyphens as spaces ("Fish-Oil" == "fish oil")."""
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower().replace("’", "'")).split())


class Lexicon:
    """Lookup from any written form to the canonical name, and mention finding in text."""

    def __init__(self, entries: list[LexiconEntry]) -> None:
        self.entries = {e.normalized: e for e in entries}
        self._by_surface: dict[str, str] = {}
        for entry in entries:
            for surface in entry.surfaces:
                self._by_surface.setdefault(_key(surface), entry.normalized)
        alternatives = sorted(self._by_surface, key=len, reverse=True)
        body = "|".join(re.escape(a).replace(r"\ ", r"[\s.-]+") for a in alternatives)
        self._pattern = re.compile(rf"(?<![\w-])(?:{body})(?![\w])", re.IGNORECASE)

    @classmethod
    def load(cls, path: Path) -> Lexicon:
        try:
            with path.open(encoding="utf-8", newline="") as fh:
                rows = list(csv.DictReader(fh, delimiter="\t"))
        except FileNotFoundError as exc:
            raise ExtractionError(f"lexicon not found: {path}") from exc
        entries = []
        for lineno, row in enumerate(rows, start=2):
            if None in row or any(c not in row for c in COLUMNS):
                raise ExtractionError(f"{path}:{lineno}: expected columns {', '.join(COLUMNS)}")
            name = row["normalized"].strip()
            if not name or name != name.lower():
                raise ExtractionError(f"{path}:{lineno}: normalized name must be lower case")
            entries.append(
                LexiconEntry(
                    normalized=name,
                    category=row["category"].strip(),
                    synonyms=_cells(row["synonyms"]),
                    brands=_cells(row["brands"]),
                    misspellings=_cells(row["misspellings"]),
                    rxcui=row["rxcui"].strip(),
                    unii=row["unii"].strip(),
                    code_source=row["code_source"].strip(),
                )
            )
        return cls(entries)

    def __contains__(self, normalized: str) -> bool:
        return normalized in self.entries

    def normalize(self, surface: str, fuzzy: bool = True) -> str | None:
        """Canonical name of a written mention, or None when the lexicon does not know it."""
        key = _key(surface)
        if key in self._by_surface:
            return self._by_surface[key]
        stripped = " ".join(_FORM_WORDS.sub(" ", key).split())
        if stripped in self._by_surface:
            return self._by_surface[stripped]
        if fuzzy and len(stripped) >= 5:
            close = difflib.get_close_matches(stripped, self._by_surface, n=1, cutoff=0.88)
            if close:
                return self._by_surface[close[0]]
        return None

    def find_mentions(self, text: str) -> list[tuple[int, int, str]]:
        """Non-overlapping (start, end, normalized) lexicon hits, longest form first."""
        return [
            (m.start(), m.end(), self._by_surface[_key(m.group(0))])
            for m in self._pattern.finditer(text)
            if _key(m.group(0)) in self._by_surface
        ]

    def mentions_any(self, text: str) -> bool:
        """Whether ``text`` holds a lexicon hit (the backends' lexicon gate; it runs on every
        sentence, so it stops at the first hit)."""
        return any(_key(m.group(0)) in self._by_surface for m in self._pattern.finditer(text))

    def candidates(self, text: str) -> str:
        """The lexicon hits of ``text`` as written, comma-separated (a prompt hint)."""
        return ", ".join(dict.fromkeys(text[s:e] for s, e, _ in self.find_mentions(text)))
