"""Authorisation for the FHIR client: none, HTTP Basic, static bearer, SMART Backend Services.

SMART Backend Services (client_credentials with a ``private_key_jwt`` assertion, RS384 or
ES384) takes its token endpoint from ``<base>/.well-known/smart-configuration`` and caches
the access token until shortly before it expires. The FHIR client calls :meth:`invalidate`
once on a 401 and asks again, so a token revoked early costs one round trip, not a failure.
"""

from __future__ import annotations

import base64
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from adapter.config import AuthConfig
from adapter.errors import AuthError

log = logging.getLogger(__name__)

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# SMART caps assertion lifetime at five minutes; stay under it to survive clock skew.
_ASSERTION_LIFETIME_S = 240
# Renew this long before expiry so a token never expires in the middle of a request.
_REFRESH_MARGIN_S = 60.0


class Authenticator(Protocol):
    """Supplies the Authorization header; ``refreshable`` says whether a 401 is worth a retry."""

    @property
    def refreshable(self) -> bool: ...

    def headers(self, http: httpx.Client) -> dict[str, str]: ...

    def invalidate(self) -> None: ...


class NoAuth:
    refreshable = False

    def headers(self, http: httpx.Client) -> dict[str, str]:
        return {}

    def invalidate(self) -> None:
        return None


class StaticAuth:
    """A fixed Authorization header (Basic or a static bearer token): a 401 is final."""

    refreshable = False

    def __init__(self, header: str) -> None:
        self._header = header

    @classmethod
    def basic(cls, username: str, password: str) -> StaticAuth:
        raw = f"{username}:{password}".encode()
        return cls("Basic " + base64.b64encode(raw).decode("ascii"))

    @classmethod
    def bearer(cls, token: str) -> StaticAuth:
        return cls(f"Bearer {token}")

    def headers(self, http: httpx.Client) -> dict[str, str]:
        return {"Authorization": self._header}

    def invalidate(self) -> None:
        return None


@dataclass(frozen=True)
class SmartCredentials:
    """A registered backend-services client: id, signing key (PEM), key id, algorithm, scopes."""

    client_id: str
    private_key_pem: bytes
    key_id: str
    algorithm: str
    scopes: str

    def __repr__(self) -> str:  # never print the key
        return f"SmartCredentials(client_id={self.client_id!r}, algorithm={self.algorithm!r})"


@dataclass(frozen=True)
class _Token:
    value: str
    expires_at: float


class SmartBackendAuth:
    """SMART Backend Services: a signed client assertion exchanged for a cached access token."""

    refreshable = True

    def __init__(
        self,
        credentials: SmartCredentials,
        base_url: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        _check_key(credentials.private_key_pem, credentials.algorithm)
        self._creds = credentials
        self._base_url = base_url.rstrip("/")
        self._clock = clock
        self._token: _Token | None = None
        self._token_url: str | None = None
        self.tokens_issued = 0

    def headers(self, http: httpx.Client) -> dict[str, str]:
        token = self._token
        if token is None or self._clock() >= token.expires_at - _REFRESH_MARGIN_S:
            token = self._token = self._request_token(http)
        return {"Authorization": f"Bearer {token.value}"}

    def invalidate(self) -> None:
        self._token = None

    def token_endpoint(self, http: httpx.Client) -> str:
        """The token URL advertised by the server (fetched once)."""
        if self._token_url is None:
            url = f"{self._base_url}/.well-known/smart-configuration"
            body = _json_or_error(_send(http, "GET", url))
            endpoint = body.get("token_endpoint")
            if not isinstance(endpoint, str) or not endpoint:
                raise AuthError("smart-configuration has no token_endpoint")
            self._token_url = endpoint
        return self._token_url

    def _assertion(self, token_url: str) -> str:
        now = int(self._clock())
        claims = {
            "iss": self._creds.client_id,
            "sub": self._creds.client_id,
            "aud": token_url,
            "iat": now,
            "exp": now + _ASSERTION_LIFETIME_S,
            "jti": uuid.uuid4().hex,
        }
        headers = {"typ": "JWT", **({"kid": self._creds.key_id} if self._creds.key_id else {})}
        return jwt.encode(
            claims, self._creds.private_key_pem, algorithm=self._creds.algorithm, headers=headers
        )

    def _request_token(self, http: httpx.Client) -> _Token:
        token_url = self.token_endpoint(http)
        form = {
            "grant_type": "client_credentials",
            "scope": self._creds.scopes,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": self._assertion(token_url),
        }
        resp = _send(http, "POST", token_url, data=form)
        body = _json_or_error(resp)
        value = body.get("access_token")
        if not isinstance(value, str) or not value:
            raise AuthError("token response has no access_token", resp.status_code)
        lifetime = body.get("expires_in", 300)
        lifetime = float(lifetime) if isinstance(lifetime, int | float) else 300.0
        self.tokens_issued += 1
        log.debug("obtained a SMART access token valid for %.0f s", lifetime)
        return _Token(value, self._clock() + lifetime)


def _send(
    http: httpx.Client, method: str, url: str, data: dict[str, str] | None = None
) -> httpx.Response:
    try:
        return http.request(method, url, data=data, headers={"Accept": "application/json"})
    except httpx.HTTPError as exc:
        raise AuthError(f"{method} {httpx.URL(url).path} failed: {type(exc).__name__}") from exc


def _json_or_error(resp: httpx.Response) -> dict[str, object]:
    try:
        body = resp.json()
    except ValueError:
        body = None
    if resp.status_code >= 400 or not isinstance(body, dict):
        detail = ""
        if isinstance(body, dict):
            detail = str(body.get("error_description") or body.get("error") or "")
        raise AuthError(
            f"authorisation request {resp.request.url.path} failed with HTTP {resp.status_code}",
            resp.status_code,
            detail,
        )
    return body


def _check_key(pem: bytes, algorithm: str) -> None:
    """Fail at start-up, not at the first token request, on a key that cannot sign."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise AuthError(f"the SMART private key is not an unencrypted PEM key: {exc}") from exc
    if algorithm == "RS384" and not isinstance(key, rsa.RSAPrivateKey):
        raise AuthError("auth.algorithm RS384 needs an RSA private key")
    if algorithm == "ES384" and not (
        isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    ):
        raise AuthError("auth.algorithm ES384 needs an EC P-384 private key")


def build_authenticator(
    config: AuthConfig,
    base_url: str,
    key_path: Path | None = None,
    clock: Callable[[], float] = time.time,
) -> Authenticator:
    """The authenticator ``config`` asks for; ``key_path`` is the resolved private key file."""
    if config.method == "basic":
        return StaticAuth.basic(config.username, config.password.get_secret_value())
    if config.method == "bearer":
        return StaticAuth.bearer(config.token.get_secret_value())
    if config.method == "smart":
        path = key_path or config.private_key_path
        if path is None:
            raise AuthError("auth.private_key_path is required for SMART Backend Services")
        try:
            pem = path.read_bytes()
        except OSError as exc:
            raise AuthError(f"cannot read the SMART private key {path}: {exc}") from exc
        creds = SmartCredentials(
            config.client_id, pem, config.key_id, config.algorithm, config.scopes
        )
        return SmartBackendAuth(creds, base_url, clock)
    return NoAuth()
