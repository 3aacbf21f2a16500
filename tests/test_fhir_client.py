"""FHIR client failure paths a real server cannot produce on demand (httpx.MockTransport)."""

from __future__ import annotations

import email.utils
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from adapter.auth import SmartBackendAuth, SmartCredentials, StaticAuth, build_authenticator
from adapter.config import AuthConfig
from adapter.errors import AuthError, FhirFatalError, FhirTemporaryError
from adapter.fhir_client import FhirClient, RetryPolicy, parse_retry_after, tls_verify

BASE = "https://ehr.example.org/fhir"
NOW = 1_750_000_000.0
Handler = Callable[[httpx.Request], httpx.Response]


def bundle(entries: int = 0, next_url: str | None = None) -> dict[str, Any]:
    links = [{"relation": "next", "url": next_url}] if next_url else []
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": links,
        "entry": [{"resource": {"resourceType": "DocumentReference", "id": f"d{i}"}}
                  for i in range(entries)],
    }  # fmt: skip


def outcome(text: str) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "processing", "diagnostics": text}],
    }


class Script:
    """Answers requests from a list of responses (the last one repeats); records requests."""

    def __init__(self, *responses: httpx.Response) -> None:
        self.responses = list(responses)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if len(self.responses) > 1:
            return self.responses.pop(0)
        return self.responses[0]


def client(handler: Handler, sleeps: list[float], **kwargs: Any) -> FhirClient:
    return FhirClient(
        BASE,
        transport=httpx.MockTransport(handler),
        retry=kwargs.pop("retry", RetryPolicy(max_retries=3, backoff_base_s=1, max_backoff_s=60)),
        sleep=sleeps.append,
        clock=lambda: NOW,
        **kwargs,
    )


def ok(body: dict[str, Any] | None = None) -> httpx.Response:
    return httpx.Response(200, json=body if body is not None else bundle(1))


def test_429_waits_for_retry_after_seconds() -> None:
    script = Script(httpx.Response(429, headers={"Retry-After": "7"}), ok())
    sleeps: list[float] = []
    pages = list(client(script, sleeps).search_pages("DocumentReference", [("_count", "1")]))
    assert sleeps == [7.0]
    assert len(pages) == 1 and len(script.requests) == 2
    assert script.requests[1].headers["Prefer"] == "handling=strict"


def test_retry_after_as_http_date_is_honoured_and_capped() -> None:
    when = email.utils.formatdate(NOW + 30, usegmt=True)
    assert parse_retry_after(when, NOW) == pytest.approx(30, abs=1)
    script = Script(httpx.Response(503, headers={"Retry-After": when}), ok())
    sleeps: list[float] = []
    policy = RetryPolicy(max_retries=2, backoff_base_s=1, max_backoff_s=10)
    client(script, sleeps, retry=policy).get_json("Patient/1")
    assert sleeps == [10.0]
    assert parse_retry_after("soon", NOW) is None


def test_503_then_success_backs_off_exponentially() -> None:
    script = Script(httpx.Response(503), httpx.Response(503), ok({"resourceType": "Patient"}))
    sleeps: list[float] = []
    assert client(script, sleeps).get_json("Patient/1") == {"resourceType": "Patient"}
    assert sleeps == [1.0, 2.0]


def test_500_exhausted_is_a_temporary_error_with_the_outcome() -> None:
    script = Script(httpx.Response(500, json=outcome("database is down")))
    sleeps: list[float] = []
    with pytest.raises(FhirTemporaryError) as err:
        client(script, sleeps).get_json("DocumentReference", [("patient", "Patient/secret")])
    assert len(script.requests) == 4  # one try + max_retries
    assert sleeps == [1.0, 2.0, 4.0]
    assert err.value.status == 500
    assert "database is down" in str(err.value)
    assert "secret" not in str(err.value)  # query strings can carry patient ids


def test_transport_errors_are_retried_for_reads_only() -> None:
    calls = {"n": 0}

    def flaky(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] == 1:
            raise httpx.ConnectError("refused", request=request)
        return ok({"resourceType": "Patient"})

    sleeps: list[float] = []
    client(flaky, sleeps).get_json("Patient/1")
    assert (calls["n"], sleeps) == (2, [1.0])

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(FhirTemporaryError, match="ConnectError"):
        client(down, []).transaction({"resourceType": "Bundle", "entry": []}, idempotent=False)


def test_a_non_idempotent_post_is_never_retried() -> None:
    script = Script(httpx.Response(503))
    sleeps: list[float] = []
    plain = {"resourceType": "Bundle", "type": "transaction", "entry": [{"request": {}}]}
    with pytest.raises(FhirTemporaryError):
        client(script, sleeps).transaction(plain, idempotent=False)
    assert (len(script.requests), sleeps) == (1, [])


def test_a_rejected_transaction_surfaces_the_operation_outcome() -> None:
    script = Script(httpx.Response(422, json=outcome("MedicationStatement.status: bad code")))
    with pytest.raises(FhirFatalError) as err:
        client(script, []).transaction({"resourceType": "Bundle", "entry": []}, idempotent=True)
    assert err.value.status == 422
    assert "MedicationStatement.status: bad code" in str(err.value)
    assert len(script.requests) == 1  # 4xx is final


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"<html>gateway</html>", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"resourceType": "Patient"}', "malformed Bundle"),
        (b'{"resourceType": "Bundle", "type": "searchset", "entry": {"x": 1}}', "entry"),
        (b'{"resourceType": "Bundle", "type": "batch-response"}', "not searchset"),
    ],
)
def test_malformed_search_responses_are_fatal(body: bytes, message: str) -> None:
    script = Script(httpx.Response(200, content=body))
    with pytest.raises(FhirFatalError, match=message):
        list(client(script, []).search_pages("DocumentReference", []))


def test_next_links_are_followed_as_given_but_only_on_the_same_server() -> None:
    opaque = f"{BASE}/?_getpages=abc%2Bdef&_offset=1"
    script = Script(ok(bundle(1, opaque)), ok(bundle(1, "https://evil.example/fhir?p=2")))
    pages = client(script, []).search_pages("DocumentReference", [])
    assert next(pages)["entry"]
    assert next(pages)["entry"]
    assert str(script.requests[1].url) == opaque  # not re-encoded
    with pytest.raises(FhirFatalError, match="another server"):
        next(pages)
    assert len(script.requests) == 2  # the foreign URL was never requested


def rsa_pem() -> tuple[bytes, Any]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return pem, key.public_key()


class TokenServer:
    """A SMART token endpoint plus a FHIR endpoint that answers from a script."""

    def __init__(self, fhir: Handler, expires_in: int = 300) -> None:
        self.fhir = fhir
        self.expires_in = expires_in
        self.assertions: list[str] = []
        self.issued = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/.well-known/smart-configuration"):
            return httpx.Response(200, json={"token_endpoint": "https://auth.example.org/token"})
        if request.url.host == "auth.example.org":
            form = dict(httpx.QueryParams(request.content.decode()))
            assert form["grant_type"] == "client_credentials"
            self.assertions.append(form["client_assertion"])
            self.issued += 1
            return httpx.Response(
                200, json={"access_token": f"tok{self.issued}", "expires_in": self.expires_in}
            )
        return self.fhir(request)


def smart(pem: bytes, clock: Callable[[], float], alg: str = "RS384") -> SmartBackendAuth:
    creds = SmartCredentials("dsfhir", pem, "kid-1", alg, "system/DocumentReference.rs")
    return SmartBackendAuth(creds, BASE, clock)


def test_401_triggers_exactly_one_reauthorisation() -> None:
    pem, _ = rsa_pem()
    script = Script(httpx.Response(401), ok({"resourceType": "Patient"}))
    tokens = TokenServer(script)
    fhir = client(tokens, [], auth=smart(pem, lambda: NOW))
    assert fhir.get_json("Patient/1") == {"resourceType": "Patient"}
    assert tokens.issued == 2
    assert [r.headers["Authorization"] for r in script.requests] == ["Bearer tok1", "Bearer tok2"]

    refused = Script(httpx.Response(401, json=outcome("token revoked")))
    tokens = TokenServer(refused)
    with pytest.raises(AuthError, match="token revoked"):
        client(tokens, [], auth=smart(pem, lambda: NOW)).get_json("Patient/1")
    assert (len(refused.requests), tokens.issued) == (2, 2)


def test_the_token_is_cached_until_shortly_before_expiry() -> None:
    pem, _ = rsa_pem()
    now = {"t": NOW}
    tokens = TokenServer(Script(ok({"resourceType": "Patient"})), expires_in=300)
    fhir = client(tokens, [], auth=smart(pem, lambda: now["t"]))
    for offset in (0, 100, 200):
        now["t"] = NOW + offset
        fhir.get_json("Patient/1")
    assert tokens.issued == 1
    now["t"] = NOW + 250  # inside the renewal margin
    fhir.get_json("Patient/1")
    assert tokens.issued == 2


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_the_client_assertion_is_a_signed_backend_services_jwt(alg: str) -> None:
    if alg == "RS384":
        pem, public = rsa_pem()
    else:
        key = ec.generate_private_key(ec.SECP384R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        public = key.public_key()
    tokens = TokenServer(Script(ok({"resourceType": "Patient"})))
    client(tokens, [], auth=smart(pem, lambda: NOW, alg)).get_json("Patient/1")
    (assertion,) = tokens.assertions
    claims = jwt.decode(
        assertion,
        public,
        algorithms=[alg],
        audience="https://auth.example.org/token",
        options={"verify_exp": False, "verify_iat": False},
    )
    assert jwt.get_unverified_header(assertion)["kid"] == "kid-1"
    assert claims["iss"] == claims["sub"] == "dsfhir"
    assert 0 < claims["exp"] - NOW <= 300


def test_a_key_that_does_not_match_the_algorithm_fails_at_start(tmp_path: Path) -> None:
    pem, _ = rsa_pem()
    with pytest.raises(AuthError, match="ES384 needs an EC P-384"):
        smart(pem, lambda: NOW, "ES384")
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(b"not a key")
    config = AuthConfig(method="smart", client_id="c", private_key_path=key_file)
    with pytest.raises(AuthError, match="not an unencrypted PEM"):
        build_authenticator(config, BASE)


def test_token_endpoint_errors_name_the_oauth_error() -> None:
    pem, _ = rsa_pem()

    def refuse(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("smart-configuration"):
            return httpx.Response(200, json={"token_endpoint": f"{BASE}/token"})
        return httpx.Response(401, json={"error": "invalid_client", "error_description": "bad jwt"})

    with pytest.raises(AuthError, match="bad jwt"):
        client(refuse, [], auth=smart(pem, lambda: NOW)).get_json("Patient/1")


def test_basic_and_bearer_send_a_fixed_header_and_do_not_retry_401() -> None:
    script = Script(httpx.Response(401))
    with pytest.raises(AuthError):
        client(script, [], auth=StaticAuth.basic("u", "p")).get_json("Patient/1")
    assert script.requests[0].headers["Authorization"] == "Basic dTpw"
    assert len(script.requests) == 1
    config = AuthConfig.model_validate({"method": "bearer", "token": "abc"})
    seen = Script(ok({"resourceType": "Patient"}))
    client(seen, [], auth=build_authenticator(config, BASE)).get_json("Patient/1")
    assert seen.requests[0].headers["Authorization"] == "Bearer abc"


def test_tls_verification_is_on_by_default_and_a_ca_bundle_is_used(tmp_path: Path) -> None:
    assert tls_verify(True, None) is True
    assert tls_verify(False, tmp_path / "ignored.pem") is False
    import certifi

    ctx = tls_verify(True, Path(certifi.where()))
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED


def test_binary_reads_ask_for_the_attachment_type_first() -> None:
    script = Script(httpx.Response(200, content=b"caf\xe9", headers={"Content-Type": "text/plain"}))
    body, ctype = client(script, []).read_binary("Binary/b1", "text/plain")
    assert (body, ctype) == (b"caf\xe9", "text/plain")
    assert script.requests[0].headers["Accept"] == "text/plain, application/fhir+json;q=0.9"
    assert str(script.requests[0].url) == f"{BASE}/Binary/b1"
