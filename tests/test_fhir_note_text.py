"""Note text: attachment choice, charsets, HTML, Binary fetches and every "no text" reason."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest

from adapter.errors import FhirFatalError, FhirTemporaryError, NoteTextError
from adapter.fhir_client import FhirClient
from adapter.note_text import choose_attachment, html_to_text, note_text, parse_content_type

LIMIT = 10_000


def doc(*attachments: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "DocumentReference",
        "content": [{"attachment": a} for a in attachments],
    }


def inline(text: str | bytes, content_type: str) -> dict[str, Any]:
    raw = text.encode() if isinstance(text, str) else text
    return {"contentType": content_type, "data": base64.b64encode(raw).decode()}


def no_fetch(url: str, content_type: str) -> tuple[bytes, str]:
    raise AssertionError("nothing should be fetched")


def test_plain_text_beats_html_beats_xhtml_and_other_types_are_ignored() -> None:
    d = doc(
        inline("<p>html</p>", "text/html"),
        {"contentType": "application/pdf", "url": "Binary/pdf"},
        inline("plain", "text/plain; charset=utf-8"),
        inline("<p>x</p>", "application/xhtml+xml"),
    )
    index, _ = choose_attachment(d)
    assert index == 2
    got = note_text(d, no_fetch, LIMIT)
    assert (got.text, got.content_type, got.source) == ("plain", "text/plain", "data")
    assert got.path == "DocumentReference.content[2].attachment"


def test_the_declared_charset_is_used() -> None:
    latin = inline(
        "Patient takes ginkgo – café".encode("cp1252"), "text/plain; charset=windows-1252"
    )
    assert note_text(doc(latin), no_fetch, LIMIT).text == "Patient takes ginkgo – café"
    assert parse_content_type('text/plain; format=flowed; charset="ISO-8859-1"') == (
        "text/plain",
        "ISO-8859-1",
    )


@pytest.mark.parametrize(
    ("attachment", "reason"),
    [
        ({"contentType": "application/pdf", "url": "Binary/x"}, "no-text-attachment"),
        ({"contentType": "text/rtf", "data": "e1xydGY="}, "no-text-attachment"),
        ({"contentType": "text/plain", "data": "@@not base64@@"}, "invalid-base64"),
        (inline("x", "text/plain; charset=klingon-8"), "unknown-charset"),
        (inline(b"\xff\xfe\xfa", "text/plain; charset=utf-8"), "undecodable"),
        (inline("   \n ", "text/plain"), "empty"),
        ({"contentType": "text/plain", "data": "QUJD", "size": LIMIT + 1}, "too-large"),
        (inline("x" * (LIMIT + 10), "text/plain"), "too-large"),
    ],
)
def test_each_kind_of_unusable_note_names_its_reason(
    attachment: dict[str, Any], reason: str
) -> None:
    with pytest.raises(NoteTextError) as err:
        note_text(doc(attachment), no_fetch, LIMIT)
    assert err.value.reason == reason


def test_a_note_without_any_attachment_says_so() -> None:
    with pytest.raises(NoteTextError, match="no attachments"):
        note_text({"resourceType": "DocumentReference", "content": []}, no_fetch, LIMIT)


def test_html_becomes_readable_text() -> None:
    html = (
        "<html><head><title>t</title><style>p{}</style></head><body><h1>Plan</h1>"
        "<p>Continue <b>fish oil</b> daily.<br>Stop ginkgo &amp; garlic.</p>"
        "<ul><li>vitamin D</li><li>iron</li></ul><script>alert(1)</script></body></html>"
    )
    assert html_to_text(html) == (
        "Plan\nContinue fish oil daily.\nStop ginkgo & garlic.\nvitamin D\niron"
    )
    # a line break in the HTML source is only whitespace, not a new line of the note
    assert html_to_text("<p>since starting\n   magnesium</p><p>next</p>") == (
        "since starting magnesium\nnext"
    )
    got = note_text(doc(inline(html, "text/html; charset=utf-8")), no_fetch, LIMIT)
    assert "fish oil" in got.text and "<b>" not in got.text


def mock_client(handler: Any) -> FhirClient:
    return FhirClient(
        "https://ehr.example.org/fhir",
        transport=httpx.MockTransport(handler),
        sleep=lambda s: None,
    )


def test_url_only_attachments_accept_raw_bytes_in_the_served_charset() -> None:
    def serve(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/fhir/Binary/b7"
        assert request.headers["Accept"].startswith("text/plain")
        body = "Pt reports taking St. John’s wort".encode("utf-16")
        return httpx.Response(
            200, content=body, headers={"Content-Type": "text/plain; charset=utf-16"}
        )

    with mock_client(serve) as client:
        attachment = {"contentType": "text/plain", "url": "Binary/b7"}
        got = note_text(doc(attachment), client.read_binary, LIMIT)
    assert (got.text, got.source) == ("Pt reports taking St. John’s wort", "url")


def test_url_only_attachments_decode_a_binary_resource() -> None:
    def serve(request: httpx.Request) -> httpx.Response:
        binary = {"resourceType": "Binary", "contentType": "text/plain", "data": "dGFrZXMgaXJvbg=="}
        return httpx.Response(
            200,
            content=json.dumps(binary).encode(),
            headers={"Content-Type": "application/fhir+json"},
        )

    with mock_client(serve) as client:
        attachment = {"contentType": "text/plain", "url": "https://ehr.example.org/fhir/Binary/1"}
        assert note_text(doc(attachment), client.read_binary, LIMIT).text == "takes iron"


def test_binary_fetch_failures_split_into_no_text_and_retry_later() -> None:
    attachment = {"contentType": "text/plain", "url": "Binary/1"}

    def gone(url: str, ctype: str) -> tuple[bytes, str]:
        raise FhirFatalError("GET Binary/1 failed with HTTP 404", 404)

    def busy(url: str, ctype: str) -> tuple[bytes, str]:
        raise FhirTemporaryError("GET Binary/1 failed with HTTP 503", 503)

    with pytest.raises(NoteTextError) as err:
        note_text(doc(attachment), gone, LIMIT)
    assert (err.value.reason, err.value.detail) == ("binary-fetch-failed", "HTTP 404")
    with pytest.raises(FhirTemporaryError):  # not a property of the note: the page is retried
        note_text(doc(attachment), busy, LIMIT)

    def not_binary(url: str, ctype: str) -> tuple[bytes, str]:
        return b'{"resourceType": "Patient"}', "application/fhir+json"

    with pytest.raises(NoteTextError, match="bad-binary"):
        note_text(doc(attachment), not_binary, LIMIT)
