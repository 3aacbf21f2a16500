"""Text clean-up checks and sentence splitting that keeps offsets into the original text.

Clinical notes break sentences with line breaks, bullets and list items as often as with
full stops, and use abbreviations with dots ("p.o.", "Dr.", "approx."), so splitting is
line-first, then on sentence-final punctuation followed by a capital or a digit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ABBREV = frozenset(
    "dr mr mrs ms pt pts approx vs etc eg ie e.g i.e p.o po bid tid qid qhs prn hx dx "
    "tx rx sx fx mg mcg gm no st ft oz wk wks yr yrs mo mos min max inc jr sr".split()
)
_BOUNDARY = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")
_LINE = re.compile(r"[^\n]+")
_SOFT_BREAK = re.compile(r"[;,]\s+|\s+")


@dataclass(frozen=True)
class Sentence:
    start: int
    end: int
    text: str


def _split_line(line: str, offset: int) -> list[Sentence]:
    out = []
    start = 0
    for m in _BOUNDARY.finditer(line):
        before = line[start : m.start()].rstrip()
        last_word = before.rsplit(maxsplit=1)[-1].rstrip(".!?").lower() if before else ""
        if last_word in _ABBREV or len(last_word) == 1:
            continue
        out.append((start, m.start()))
        start = m.end()
    out.append((start, len(line)))
    return [Sentence(offset + s, offset + e, line[s:e]) for s, e in out if line[s:e].strip()]


def _window(sent: Sentence, max_chars: int) -> list[Sentence]:
    """Cut an over-long sentence at soft breaks so every piece fits ``max_chars``."""
    pieces = []
    start = 0
    text = sent.text
    while len(text) - start > max_chars:
        cut = max(
            (m.end() for m in _SOFT_BREAK.finditer(text, start, start + max_chars)),
            default=start + max_chars,
        )
        if cut <= start:
            cut = start + max_chars
        pieces.append((start, cut))
        start = cut
    pieces.append((start, len(text)))
    return [
        Sentence(sent.start + s, sent.start + e, text[s:e]) for s, e in pieces if text[s:e].strip()
    ]


def split_sentences(text: str, max_chars: int = 600) -> list[Sentence]:
    """Sentences of ``text`` (trimmed of surrounding spaces), offsets into ``text``."""
    out: list[Sentence] = []
    for line in _LINE.finditer(text):
        for sent in _split_line(line.group(0), line.start()):
            lead = len(sent.text) - len(sent.text.lstrip())
            trail = len(sent.text.rstrip())
            trimmed = Sentence(sent.start + lead, sent.start + trail, sent.text[lead:trail])
            out.extend(_window(trimmed, max_chars))
    return out


def check_text(text: object, max_chars: int) -> tuple[str, bool]:
    """Validate an input text; return it (truncated to ``max_chars``) and whether it was cut.

    Raises ``ValueError`` with the reason for input that cannot be processed.
    """
    if not isinstance(text, str):
        raise ValueError("text must be a string")
    if not text.strip():
        raise ValueError("text is empty")
    if "\x00" in text:
        raise ValueError("text contains NUL bytes (binary content?)")
    if len(text) > max_chars:
        return text[:max_chars], True
    return text, False
