"""Note text from a DocumentReference: pick the attachment, decode it, or say why there is none.

Attachments rank text/plain > text/html > application/xhtml+xml; anything else (PDF, RTF,
images) is "no text" with the reason, never silently dropped. Inline ``data`` is base64
decoded with the declared charset; a ``url``-only attachment is fetched as a Binary (raw
bytes, or a Binary resource in FHIR JSON). HTML becomes readable plain text. Extraction
offsets refer to the text returned here.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from selectolax.lexbor import LexborHTMLParser

from adapter.errors import FhirFatalError, NoteTextError

# (url, content type) -> (bytes, response Content-Type); FhirTemporaryError propagates.
BinaryFetcher = Callable[[str, str], tuple[bytes, str]]

RANK = {"text/plain": 3, "text/html": 2, "application/xhtml+xml": 1}
_BLOCK_TAGS = (
    "br,p,div,li,dt,dd,tr,h1,h2,h3,h4,h5,h6,ul,ol,dl,table,section,article,header,footer,"
    "pre,blockquote,hr,caption"
)
# A line-break marker that no whitespace collapsing touches (Unicode private use).
_BREAK = "\ue000"


@dataclass(frozen=True)
class NoteText:
    text: str
    content_type: str
    attachment_index: int
    source: Literal["data", "url"]

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    @property
    def path(self) -> str:
        """The FHIRPath of the attachment the text (and every offset) comes from."""
        return f"DocumentReference.content[{self.attachment_index}].attachment"


def parse_content_type(value: str) -> tuple[str, str | None]:
    """(lower-case mime type, charset or None) from a Content-Type value."""
    mime, _, rest = value.partition(";")
    charset = None
    for param in rest.split(";"):
        key, _, val = param.partition("=")
        if key.strip().lower() == "charset" and val.strip():
            charset = val.strip().strip('"')
    return mime.strip().lower(), charset


def choose_attachment(doc: Mapping[str, Any]) -> tuple[int, Mapping[str, Any]]:
    """The best text attachment (index, attachment) or NoteTextError naming what was there."""
    best: tuple[int, int, Mapping[str, Any]] | None = None
    seen: list[str] = []
    for index, content in enumerate(doc.get("content") or []):
        attachment = content.get("attachment") if isinstance(content, dict) else None
        if not isinstance(attachment, dict):
            continue
        mime, _ = parse_content_type(str(attachment.get("contentType") or ""))
        seen.append(mime or "no contentType")
        rank = RANK.get(mime, 0)
        if rank and (attachment.get("data") or attachment.get("url")):
            if best is None or rank > best[0]:
                best = (rank, index, attachment)
    if best is None:
        kinds = ", ".join(sorted(set(seen))) or "no attachments"
        raise NoteTextError("no-text-attachment", kinds)
    return best[1], best[2]


def decode_text(raw: bytes, charset: str | None) -> str:
    """Bytes to str with the declared charset (UTF-8 when none is declared)."""
    name = charset or "utf-8"
    try:
        codecs.lookup(name)
    except LookupError as exc:
        raise NoteTextError("unknown-charset", name) from exc
    try:
        return raw.decode(name).removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise NoteTextError("undecodable", f"bytes are not valid {name}") from exc


def html_to_text(html: str) -> str:
    """Readable plain text: scripts/styles dropped, block elements on their own lines."""
    tree = LexborHTMLParser(html)
    for node in tree.css("script,style,head,title"):
        node.decompose()
    # Source line breaks inside HTML text are just spaces; only block ends start a line.
    for node in tree.css(_BLOCK_TAGS):
        node.insert_after(_BREAK)
    for node in tree.css("td,th"):
        node.insert_after(" ")
    root = tree.body or tree.root
    text = root.text(separator="") if root is not None else ""
    lines = [" ".join(part.split()) for part in text.split(_BREAK)]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _b64(data: str, max_bytes: int) -> bytes:
    compact = "".join(data.split())
    if len(compact) * 3 // 4 > max_bytes:
        raise NoteTextError("too-large", f"more than {max_bytes} bytes")
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise NoteTextError("invalid-base64", "attachment data is not valid base64") from exc


def _from_binary_json(body: bytes, max_bytes: int) -> tuple[bytes, str]:
    """A Binary resource (FHIR JSON) to (bytes, its contentType)."""
    try:
        res = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise NoteTextError("bad-binary", "Binary response is not valid JSON") from exc
    if not isinstance(res, dict) or res.get("resourceType") != "Binary":
        raise NoteTextError("bad-binary", "response is not a Binary resource")
    return _b64(str(res.get("data") or ""), max_bytes), str(res.get("contentType") or "")


def _fetch(url: str, mime: str, fetch: BinaryFetcher, max_bytes: int) -> tuple[bytes, str]:
    try:
        body, resp_type = fetch(url, mime)
    except FhirFatalError as exc:
        detail = f"HTTP {exc.status}" if exc.status else str(exc)
        raise NoteTextError("binary-fetch-failed", detail) from exc
    resp_mime, _ = parse_content_type(resp_type)
    if resp_mime in ("application/fhir+json", "application/json"):
        return _from_binary_json(body, max_bytes)
    return body, resp_type


def note_text(doc: Mapping[str, Any], fetch: BinaryFetcher, max_bytes: int) -> NoteText:
    """The note's text, or NoteTextError with the reason (recorded per note)."""
    index, attachment = choose_attachment(doc)
    declared = str(attachment.get("contentType") or "")
    mime, charset = parse_content_type(declared)
    size = attachment.get("size")
    if isinstance(size, int) and size > max_bytes:
        raise NoteTextError("too-large", f"{size} bytes declared, limit {max_bytes}")
    if attachment.get("data"):
        raw, from_url = _b64(str(attachment["data"]), max_bytes), False
    else:
        raw, served = _fetch(str(attachment["url"]), mime, fetch, max_bytes)
        served_mime, served_charset = parse_content_type(served)
        if served_mime in RANK:
            mime, charset = served_mime, served_charset or charset
        from_url = True
    if len(raw) > max_bytes:
        raise NoteTextError("too-large", f"{len(raw)} bytes, limit {max_bytes}")
    text = decode_text(raw, charset)
    if mime != "text/plain":
        text = html_to_text(text)
    if not text.strip():
        raise NoteTextError("empty", "the attachment has no text")
    return NoteText(text, mime, index, "url" if from_url else "data")
