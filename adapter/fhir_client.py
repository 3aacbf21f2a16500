"""A small synchronous FHIR R4 REST client over httpx: retries, auth, paging, Binary, transactions.

Retry policy: 429 and 503 wait for ``Retry-After`` (seconds or an HTTP date, capped) or an
exponential backoff; 408/500/502/504 and transport errors back off exponentially; all of
them at most ``max_retries`` times. Only idempotent requests are retried: GET/PUT, and a
POST the caller declares idempotent (a transaction whose entries are all conditional).
A 401 triggers one re-authorisation. Errors carry the server's OperationOutcome text.

The transport is injectable (``httpx.MockTransport`` in tests); TLS verification is on
unless configured off, with an optional CA bundle.
"""

from __future__ import annotations

import email.utils
import json
import logging
import ssl
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from adapter.auth import Authenticator, NoAuth
from adapter.errors import AuthError, FhirError, FhirFatalError, FhirTemporaryError

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
_RETRY_AFTER_STATUSES = frozenset({429, 503})
_BOUNDED_STATUSES = frozenset({408, 500, 502, 504})

JsonObject = dict[str, Any]


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 3
    backoff_base_s: float = 1.0
    max_backoff_s: float = 60.0

    def backoff(self, attempt: int) -> float:
        return min(self.max_backoff_s, self.backoff_base_s * 2.0**attempt)


def tls_verify(verify_tls: bool, ca_bundle: Path | None) -> bool | ssl.SSLContext:
    """httpx's ``verify`` from the config: a custom CA bundle, the system store, or off."""
    if not verify_tls:
        return False
    if ca_bundle is not None:
        return ssl.create_default_context(cafile=str(ca_bundle))
    return True


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def outcome_text(resp: httpx.Response) -> str:
    """The readable part of an OperationOutcome (or OAuth error) body; '' when there is none."""
    try:
        body = resp.json()
    except (ValueError, UnicodeDecodeError):
        return ""
    if not isinstance(body, dict):
        return ""
    if body.get("resourceType") == "OperationOutcome":
        parts = []
        for issue in body.get("issue") or []:
            if not isinstance(issue, dict):
                continue
            details = issue.get("details") or {}
            text = details.get("text") if isinstance(details, dict) else None
            parts.append(str(text or issue.get("diagnostics") or issue.get("code") or ""))
        return "; ".join(p for p in parts if p)[:500]
    return str(body.get("error_description") or body.get("error") or "")[:500]


class FhirClient:
    """One FHIR base URL. Use as a context manager, or call :meth:`close`."""

    def __init__(
        self,
        base_url: str,
        *,
        auth: Authenticator | None = None,
        transport: httpx.BaseTransport | None = None,
        timeout_s: float = 30.0,
        verify: bool | ssl.SSLContext = True,
        retry: RetryPolicy | None = None,
        strict_search: bool = True,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not base_url:
            raise FhirFatalError("fhir.base_url is not configured")
        self.base_url = base_url.rstrip("/")
        self._auth: Authenticator = auth or NoAuth()
        self._retry = retry or RetryPolicy()
        self._strict = strict_search
        self._sleep = sleep
        self._clock = clock
        self._http = httpx.Client(
            base_url=self.base_url + "/",
            transport=transport,
            timeout=timeout_s,
            verify=verify,
            headers={"Accept": FHIR_JSON},
        )

    def __enter__(self) -> FhirClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # ---- the one request loop -------------------------------------------------------

    def request(
        self,
        method: str,
        url: str,
        *,
        params: list[tuple[str, str]] | None = None,
        json_body: JsonObject | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool | None = None,
    ) -> httpx.Response:
        """Send with auth and the retry policy; a 2xx/3xx response or a FhirError."""
        if idempotent is None:
            idempotent = method in ("GET", "HEAD", "PUT", "DELETE")
        attempt, reauthorised = 0, False
        while True:
            try:
                resp = self._send(method, url, params, json_body, headers)
            except httpx.TransportError as exc:
                if idempotent and attempt < self._retry.max_retries:
                    self._wait(self._retry.backoff(attempt), method, url, type(exc).__name__)
                    attempt += 1
                    continue
                raise FhirTemporaryError(
                    f"{method} {_path(url)} failed: {type(exc).__name__}"
                ) from exc
            if resp.status_code == 401 and self._auth.refreshable and not reauthorised:
                self._auth.invalidate()
                reauthorised = True
                continue
            if resp.status_code < 400:
                return resp
            delay = self._retry_delay(resp, attempt, idempotent)
            if delay is None:
                raise _error(method, url, resp)
            self._wait(delay, method, url, str(resp.status_code))
            attempt += 1

    def _send(
        self,
        method: str,
        url: str,
        params: list[tuple[str, str]] | None,
        json_body: JsonObject | None,
        headers: Mapping[str, str] | None,
    ) -> httpx.Response:
        merged = {**self._auth.headers(self._http), **(headers or {})}
        query = httpx.QueryParams(tuple(params)) if params else None
        if json_body is not None:
            merged.setdefault("Content-Type", FHIR_JSON)
            content = json.dumps(json_body, separators=(",", ":")).encode()
            return self._http.request(method, url, params=query, content=content, headers=merged)
        return self._http.request(method, url, params=query, headers=merged)

    def _retry_delay(self, resp: httpx.Response, attempt: int, idempotent: bool) -> float | None:
        status = resp.status_code
        retryable = status in _RETRY_AFTER_STATUSES or status in _BOUNDED_STATUSES
        if not (retryable and idempotent and attempt < self._retry.max_retries):
            return None
        if status in _RETRY_AFTER_STATUSES:
            told = parse_retry_after(resp.headers.get("Retry-After"), self._clock())
            if told is not None:
                return min(told, self._retry.max_backoff_s)
        return self._retry.backoff(attempt)

    def _wait(self, delay: float, method: str, url: str, why: str) -> None:
        log.warning("%s %s: %s, retrying in %.1f s", method, _path(url), why, delay)
        self._sleep(delay)

    # ---- interactions ---------------------------------------------------------------

    def get_json(self, url: str, params: list[tuple[str, str]] | None = None) -> JsonObject:
        resp = self.request("GET", url, params=params)
        return _json_object(resp, f"GET {_path(url)}")

    def read(self, resource_type: str, resource_id: str) -> JsonObject:
        return self.get_json(f"{resource_type}/{resource_id}")

    def search_pages(
        self, resource_type: str, params: list[tuple[str, str]]
    ) -> Iterator[JsonObject]:
        """Each searchset page, following ``link[next]`` as given (only on this server)."""
        headers = {"Prefer": "handling=strict"} if self._strict else None
        resp = self.request("GET", resource_type, params=params, headers=headers)
        while True:
            bundle = as_bundle(_json_object(resp, f"search {resource_type}"), "searchset")
            yield bundle
            next_url = next_link(bundle)
            if next_url is None:
                return
            self._check_same_server(next_url)
            resp = self.request("GET", next_url, headers=headers)

    def read_binary(self, url: str, content_type: str) -> tuple[bytes, str]:
        """Bytes and Content-Type of an attachment URL (a Binary): raw, or Binary JSON.

        ``Accept`` prefers the attachment's own type; servers that only speak FHIR JSON
        answer with a Binary resource, which the caller decodes.
        """
        self._check_same_server(url)
        accept = f"{content_type}, {FHIR_JSON};q=0.9" if content_type else FHIR_JSON
        resp = self.request("GET", url, headers={"Accept": accept})
        return resp.content, resp.headers.get("Content-Type", "")

    def transaction(self, bundle: JsonObject, *, idempotent: bool) -> JsonObject:
        """POST a transaction Bundle; the transaction-response Bundle, entry for entry."""
        resp = self.request("POST", "", json_body=bundle, idempotent=idempotent)
        body = as_bundle(_json_object(resp, "transaction"), "transaction-response")
        sent = len(bundle.get("entry") or [])
        if len(body.get("entry") or []) != sent:
            raise FhirFatalError(f"transaction response has not {sent} entries", resp.status_code)
        return body

    def _check_same_server(self, url: str) -> None:
        target = httpx.URL(url)
        if not target.is_absolute_url:
            return
        base = httpx.URL(self.base_url)
        if (target.scheme, target.host, target.port) != (base.scheme, base.host, base.port):
            # never hand our token to another host
            raise FhirFatalError(f"refusing to follow a URL on another server ({target.host})")


def next_link(bundle: JsonObject) -> str | None:
    for link in bundle.get("link") or []:
        if isinstance(link, dict) and link.get("relation") == "next" and link.get("url"):
            return str(link["url"])
    return None


def as_bundle(body: JsonObject, bundle_type: str) -> JsonObject:
    """``body`` if it is a well-formed Bundle of the expected type, else FhirFatalError."""
    if body.get("resourceType") != "Bundle":
        raise FhirFatalError(f"malformed Bundle: resourceType is {body.get('resourceType')!r}")
    if body.get("type") != bundle_type:
        raise FhirFatalError(f"malformed Bundle: type {body.get('type')!r}, not {bundle_type}")
    entries = body.get("entry", [])
    links = body.get("link", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise FhirFatalError("malformed Bundle: entry is not a list of objects")
    if not isinstance(links, list):
        raise FhirFatalError("malformed Bundle: link is not a list")
    return body


def _json_object(resp: httpx.Response, what: str) -> JsonObject:
    try:
        body = resp.json()
    except (ValueError, UnicodeDecodeError) as exc:
        raise FhirFatalError(f"{what}: response is not JSON", resp.status_code) from exc
    if not isinstance(body, dict):
        raise FhirFatalError(f"{what}: response is not a JSON object", resp.status_code)
    return body


def _error(method: str, url: str, resp: httpx.Response) -> FhirError:
    status = resp.status_code
    message = f"{method} {_path(url)} failed with HTTP {status}"
    text = outcome_text(resp)
    if status in (401, 403):
        return AuthError(message, status, text)
    if status in _RETRY_AFTER_STATUSES or status in _BOUNDED_STATUSES:
        return FhirTemporaryError(message, status, text)
    return FhirFatalError(message, status, text)


def _path(url: str) -> str:
    """The URL without query: search parameters can carry patient ids."""
    return httpx.URL(url).path or "/"
