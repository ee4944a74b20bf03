"""JWT checks of CDS Hooks 2.0 "Trusting CDS Clients", with real keys and a mocked JWKS."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import jwt
import pytest
import respx
from cryptography.hazmat.primitives import serialization

from fhir_leuko.cdshooks.auth import (
    Claims,
    InMemoryReplayCache,
    IssuerTrust,
    JwtPolicy,
    JwtVerifier,
)
from fhir_leuko.errors import AuthError, ConfigError
from tests.jwtkeys import EC_KEY, OTHER_RSA_KEY, RSA_KEY, public_jwk

pytestmark = pytest.mark.anyio

NOW = 1_800_000_000.0
SERVICE_URL = "https://cds.example.org/cds-services/leuko-patient-view"
OTHER_SERVICE_URL = "https://cds.example.org/cds-services/leuko-order-select"
FEEDBACK_URL = SERVICE_URL + "/feedback"

EHR_ISS = "https://ehr.example.org/api/FHIR/R4"
EHR_JKU = "https://ehr.example.org/api/epic/2019/Security/Open/PublicKeys/530005/jwks"
EHR_KID = "lH0Ezcm5dKc4XA3D+WOXtCkYSo+VwzBvrOCQpyAHoHk="
SANDBOX_ISS = "https://sandbox.cds-hooks.org"
SANDBOX_JKU = "https://sandbox.cds-hooks.org/.well-known/jwks.json"
SANDBOX_KID = "44823f3d-0b01-4a6c-a80e-b9d3e8a7226f"
OOB_ISS = "https://partner.example.net"
OOB_KID = "partner-2026"
EVIL_JKU = "https://attacker.example.com/jwks.json"

EHR_JWKS = {"keys": [public_jwk(RSA_KEY, EHR_KID, use="sig", alg="RS384")]}
# Like the sandbox's own set: one P-384 key. No "use" here, which must be tolerated.
SANDBOX_JWKS = {"keys": [public_jwk(EC_KEY, SANDBOX_KID)]}
OOB_JWKS = {"keys": [public_jwk(RSA_KEY, OOB_KID, use="sig")]}


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def policy(**changes: Any) -> JwtPolicy:
    settings: dict[str, Any] = {
        "issuers": {
            EHR_ISS: IssuerTrust(jku_allowlist=(EHR_JKU,)),
            SANDBOX_ISS: IssuerTrust(jku_allowlist=(SANDBOX_JKU,)),
            OOB_ISS: IssuerTrust(jwks=OOB_JWKS),
        }
    }
    settings.update(changes)
    return JwtPolicy(**settings)


def claims(**changes: Any) -> dict[str, Any]:
    """An Epic-like payload (RS384, 5 min) unless changed; None removes a claim."""
    payload: dict[str, Any] = {
        "iss": EHR_ISS,
        "aud": SERVICE_URL,
        "iat": int(NOW),
        "exp": int(NOW) + 300,
        "jti": str(uuid.uuid4()),
    }
    payload.update(changes)
    return {k: v for k, v in payload.items() if v is not None}


def ehr_token(payload: dict[str, Any] | None = None, **headers: Any) -> str:
    header = {"kid": EHR_KID, "jku": EHR_JKU, **headers}
    return jwt.encode(
        payload or claims(),
        RSA_KEY,
        algorithm="RS384",
        headers={k: v for k, v in header.items() if v is not None},
    )


def sandbox_token(payload: dict[str, Any] | None = None) -> str:
    """What sandbox.cds-hooks.org sends: ES384, jku, 300 s, no sub, no nbf, no tenant."""
    return jwt.encode(
        payload or claims(iss=SANDBOX_ISS),
        EC_KEY,
        algorithm="ES384",
        headers={"kid": SANDBOX_KID, "jku": SANDBOX_JKU, "typ": "JWT"},
    )


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def handmade_token(header: dict[str, Any], payload: dict[str, Any], sign: Any) -> str:
    """A token PyJWT would refuse to build, as an attacker would build it."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
    return f"{signing_input}.{b64url(sign(signing_input.encode()))}"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


@pytest.fixture
def jwks_server() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_mocked=True, assert_all_called=False) as router:
        router.get(EHR_JKU).mock(return_value=httpx.Response(200, json=EHR_JWKS))
        router.get(SANDBOX_JKU).mock(return_value=httpx.Response(200, json=SANDBOX_JWKS))
        router.get(EVIL_JKU).mock(return_value=httpx.Response(200, json={"keys": []}))
        yield router


@pytest.fixture
async def verifier(jwks_server: respx.MockRouter, clock: FakeClock) -> AsyncIterator[JwtVerifier]:
    async with httpx.AsyncClient() as http:
        yield JwtVerifier(policy(), http=http, clock=clock)


async def rejected(verifier: JwtVerifier, authorization: str | None, audience: str) -> str:
    """The AuthError message, checked to never echo the token."""
    with pytest.raises(AuthError) as caught:
        await verifier.verify(authorization, audience)
    message = str(caught.value)
    if authorization and "." in authorization:
        token = authorization.split()[-1]
        for part in token.split("."):
            assert len(part) < 8 or part not in message
    return message


# --- accepted -----------------------------------------------------------------------------


async def test_valid_rs384_token_is_accepted(verifier: JwtVerifier) -> None:
    payload = claims(tenant="2ddd6c3a-8e9a-44c6-a305-52111ad302a2")
    result = await verifier.verify(f"Bearer {ehr_token(payload)}", SERVICE_URL)
    assert isinstance(result, Claims)
    assert result.iss == EHR_ISS
    assert result.aud == (SERVICE_URL,)
    assert result.jti == payload["jti"]
    assert result.tenant == "2ddd6c3a-8e9a-44c6-a305-52111ad302a2"
    assert (result.alg, result.kid) == ("RS384", EHR_KID)


async def test_valid_es384_token_is_accepted(verifier: JwtVerifier) -> None:
    result = await verifier.verify(f"Bearer {sandbox_token()}", SERVICE_URL)
    assert (result.iss, result.alg) == (SANDBOX_ISS, "ES384")


async def test_es384_signature_is_raw_r_s_of_96_bytes() -> None:
    signature = sandbox_token().split(".")[2]
    assert len(base64.urlsafe_b64decode(signature + "==")) == 96


async def test_array_aud_containing_this_endpoint_is_accepted(verifier: JwtVerifier) -> None:
    token = ehr_token(claims(aud=[OTHER_SERVICE_URL, SERVICE_URL]))
    result = await verifier.verify(f"Bearer {token}", SERVICE_URL)
    assert result.aud == (OTHER_SERVICE_URL, SERVICE_URL)


async def test_epic_like_token_with_nbf_sub_and_900s_lifetime_is_accepted(
    verifier: JwtVerifier,
) -> None:
    payload = claims(
        nbf=int(NOW) - 300,
        exp=int(NOW) + 900,
        sub="b3a6f2f7-epic-cds-client-id",
    )
    result = await verifier.verify(f"Bearer {ehr_token(payload)}", SERVICE_URL)
    assert result.payload["sub"] == "b3a6f2f7-epic-cds-client-id"
    assert result.exp - result.iat == 900


async def test_sandbox_like_feedback_token_is_accepted(verifier: JwtVerifier) -> None:
    payload = claims(iss=SANDBOX_ISS, aud=FEEDBACK_URL, exp=int(NOW) + 300)
    result = await verifier.verify(f"Bearer {sandbox_token(payload)}", FEEDBACK_URL)
    assert result.tenant is None
    assert "sub" not in result.payload


async def test_one_trailing_slash_is_normalised_on_both_sides(verifier: JwtVerifier) -> None:
    token = ehr_token(claims(aud=SERVICE_URL + "/"))
    await verifier.verify(f"Bearer {token}", SERVICE_URL)
    await verifier.verify(f"Bearer {ehr_token()}", SERVICE_URL + "/")


async def test_lowercase_bearer_scheme_is_accepted(verifier: JwtVerifier) -> None:
    await verifier.verify(f"bearer {ehr_token()}", SERVICE_URL)


async def test_configured_jwks_without_jku_makes_no_request(
    verifier: JwtVerifier, jwks_server: respx.MockRouter
) -> None:
    token = jwt.encode(claims(iss=OOB_ISS), RSA_KEY, algorithm="RS384", headers={"kid": OOB_KID})
    result = await verifier.verify(f"Bearer {token}", SERVICE_URL)
    assert result.iss == OOB_ISS
    assert not jwks_server.calls


async def test_token_within_clock_skew_after_exp_is_accepted(
    verifier: JwtVerifier, clock: FakeClock
) -> None:
    token = ehr_token()
    clock.now = NOW + 300 + 59
    await verifier.verify(f"Bearer {token}", SERVICE_URL)


async def test_jwks_is_fetched_once_and_cached(
    verifier: JwtVerifier, jwks_server: respx.MockRouter, clock: FakeClock
) -> None:
    for _ in range(3):
        await verifier.verify(f"Bearer {ehr_token()}", SERVICE_URL)
        clock.now += 5
    assert jwks_server.routes[0].call_count == 1


# --- rejected: header and token shape ------------------------------------------------------


async def test_missing_authorization_header_is_rejected(verifier: JwtVerifier) -> None:
    assert await rejected(verifier, None, SERVICE_URL) == "no Authorization header"
    assert await rejected(verifier, "  ", SERVICE_URL) == "no Authorization header"


async def test_non_bearer_scheme_is_rejected(verifier: JwtVerifier) -> None:
    message = await rejected(verifier, f"Basic {ehr_token()}", SERVICE_URL)
    assert message == "the Authorization header is not a Bearer token"


async def test_empty_bearer_is_rejected(verifier: JwtVerifier) -> None:
    for header in ("Bearer", "Bearer   "):
        assert await rejected(verifier, header, SERVICE_URL) == "the Bearer token is empty"


async def test_garbage_token_is_rejected(verifier: JwtVerifier) -> None:
    for garbage in ("not-a-jwt", "a.b.c", "Zm9v.YmFy.YmF6", "x" * 20_000):
        message = await rejected(verifier, f"Bearer {garbage}", SERVICE_URL)
        assert "well-formed JWT" in message or "longer than" in message


async def test_alg_none_is_rejected(verifier: JwtVerifier) -> None:
    header = {"alg": "none", "typ": "JWT", "kid": EHR_KID, "jku": EHR_JKU}
    token = handmade_token(header, claims(), lambda _: b"")
    message = await rejected(verifier, f"Bearer {token}", SERVICE_URL)
    assert message == "alg 'none' is forbidden by CDS Hooks (none or HMAC)"


async def test_hs256_signed_with_the_public_key_is_rejected(
    verifier: JwtVerifier, jwks_server: respx.MockRouter
) -> None:
    # The classic confusion attack: the attacker knows the RSA public key and uses its
    # PEM as an HMAC secret, hoping the verifier feeds the same key to HS256.
    public_pem = RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "typ": "JWT", "kid": EHR_KID, "jku": EHR_JKU}
    token = handmade_token(
        header, claims(), lambda data: hmac.new(public_pem, data, hashlib.sha256).digest()
    )
    message = await rejected(verifier, f"Bearer {token}", SERVICE_URL)
    assert message == "alg 'HS256' is forbidden by CDS Hooks (none or HMAC)"
    assert not jwks_server.calls


async def test_allowed_but_unlisted_alg_is_rejected(verifier: JwtVerifier) -> None:
    token = jwt.encode(
        claims(), RSA_KEY, algorithm="RS256", headers={"kid": EHR_KID, "jku": EHR_JKU}
    )
    assert await rejected(verifier, f"Bearer {token}", SERVICE_URL) == (
        "alg 'RS256' is not on the allowlist"
    )


async def test_missing_kid_is_rejected(verifier: JwtVerifier) -> None:
    message = await rejected(verifier, f"Bearer {ehr_token(kid=None)}", SERVICE_URL)
    assert message == "the JWT header has no kid"


async def test_wrong_typ_is_rejected(verifier: JwtVerifier) -> None:
    message = await rejected(verifier, f"Bearer {ehr_token(typ='at+jwt')}", SERVICE_URL)
    assert message == "the JWT header typ is not JWT"


async def test_missing_typ_is_rejected(verifier: JwtVerifier) -> None:
    header = {"alg": "RS384", "kid": EHR_KID, "jku": EHR_JKU}
    token = handmade_token(header, claims(), lambda _: b"\0" * 256)
    message = await rejected(verifier, f"Bearer {token}", SERVICE_URL)
    assert message == "the JWT header typ is not JWT"


# --- rejected: issuer and keys -------------------------------------------------------------


async def test_unknown_issuer_is_rejected(
    verifier: JwtVerifier, jwks_server: respx.MockRouter
) -> None:
    token = ehr_token(claims(iss="https://unknown-ehr.example.com"))
    message = await rejected(verifier, f"Bearer {token}", SERVICE_URL)
    assert message == "issuer 'https://unknown-ehr.example.com' is not on the allowlist"
    assert not jwks_server.calls


async def test_jku_not_on_allowlist_is_rejected_without_fetching_it(
    verifier: JwtVerifier, jwks_server: respx.MockRouter
) -> None:
    token = ehr_token(jku=EVIL_JKU)
    message = await rejected(verifier, f"Bearer {token}", SERVICE_URL)
    assert message == f"jku '{EVIL_JKU}' is not on the allowlist of '{EHR_ISS}'"
    assert not jwks_server.calls


async def test_jku_of_another_issuer_is_rejected(
    verifier: JwtVerifier, jwks_server: respx.MockRouter
) -> None:
    message = await rejected(verifier, f"Bearer {ehr_token(jku=SANDBOX_JKU)}", SERVICE_URL)
    assert "is not on the allowlist of" in message
    assert not jwks_server.calls


async def test_unknown_kid_is_rejected(verifier: JwtVerifier) -> None:
    message = await rejected(verifier, f"Bearer {ehr_token(kid='retired-key')}", SERVICE_URL)
    assert message == f"no key with kid 'retired-key' for issuer '{EHR_ISS}'"


async def test_bad_signature_is_rejected(verifier: JwtVerifier) -> None:
    forged = jwt.encode(
        claims(), OTHER_RSA_KEY, algorithm="RS384", headers={"kid": EHR_KID, "jku": EHR_JKU}
    )
    assert await rejected(verifier, f"Bearer {forged}", SERVICE_URL) == (
        "the JWT signature does not verify"
    )


async def test_tampered_payload_is_rejected(verifier: JwtVerifier) -> None:
    header, _, signature = ehr_token().split(".")
    payload = b64url(json.dumps(claims(aud=OTHER_SERVICE_URL)).encode())
    message = await rejected(verifier, f"Bearer {header}.{payload}.{signature}", SERVICE_URL)
    assert message == "the JWT signature does not verify"


async def test_jwks_key_marked_for_encryption_is_rejected(
    jwks_server: respx.MockRouter, clock: FakeClock
) -> None:
    enc_jwks = {"keys": [public_jwk(RSA_KEY, EHR_KID, use="enc")]}
    jwks_server.get(EHR_JKU).mock(return_value=httpx.Response(200, json=enc_jwks))
    async with httpx.AsyncClient() as http:
        verifier = JwtVerifier(policy(), http=http, clock=clock)
        message = await rejected(verifier, f"Bearer {ehr_token()}", SERVICE_URL)
    assert message == f"key '{EHR_KID}' is marked use='enc', not for signatures"


async def test_key_of_the_wrong_type_for_alg_is_rejected(
    jwks_server: respx.MockRouter, clock: FakeClock
) -> None:
    # An RSA key published under the kid of an ES384 token.
    swapped = {"keys": [public_jwk(RSA_KEY, SANDBOX_KID)]}
    jwks_server.get(SANDBOX_JKU).mock(return_value=httpx.Response(200, json=swapped))
    async with httpx.AsyncClient() as http:
        verifier = JwtVerifier(policy(), http=http, clock=clock)
        message = await rejected(verifier, f"Bearer {sandbox_token()}", SERVICE_URL)
    assert message == f"key '{SANDBOX_KID}' cannot verify alg ES384"


async def test_jwks_fetch_timeout_is_an_auth_error_and_not_retried_within_a_minute(
    jwks_server: respx.MockRouter, clock: FakeClock
) -> None:
    route = jwks_server.get(EHR_JKU).mock(side_effect=httpx.ConnectTimeout("timed out"))
    async with httpx.AsyncClient() as http:
        verifier = JwtVerifier(policy(), http=http, clock=clock)
        message = await rejected(verifier, f"Bearer {ehr_token()}", SERVICE_URL)
        assert message == f"could not fetch the JWKS at {EHR_JKU} (ConnectTimeout)"
        clock.now += 30
        message = await rejected(verifier, f"Bearer {ehr_token()}", SERVICE_URL)
        assert message == f"the JWKS at {EHR_JKU} is unavailable; its last fetch failed"
        assert route.call_count == 1
        route.mock(return_value=httpx.Response(200, json=EHR_JWKS), side_effect=None)
        clock.now += 31
        await verifier.verify(f"Bearer {ehr_token(claims(iat=int(clock.now)))}", SERVICE_URL)
        assert route.call_count == 2


async def test_jwks_server_error_is_an_auth_error(
    jwks_server: respx.MockRouter, clock: FakeClock
) -> None:
    jwks_server.get(EHR_JKU).mock(return_value=httpx.Response(503, text="<html>down</html>"))
    async with httpx.AsyncClient() as http:
        verifier = JwtVerifier(policy(), http=http, clock=clock)
        message = await rejected(verifier, f"Bearer {ehr_token()}", SERVICE_URL)
    assert message == f"the JWKS at {EHR_JKU} answered HTTP 503"


async def test_jwks_fetch_uses_a_two_second_timeout(
    jwks_server: respx.MockRouter, verifier: JwtVerifier
) -> None:
    await verifier.verify(f"Bearer {ehr_token()}", SERVICE_URL)
    timeout = jwks_server.calls.last.request.extensions["timeout"]
    assert timeout == {"connect": 2.0, "read": 2.0, "write": 2.0, "pool": 2.0}


async def test_key_rotation_refetches_once_on_unknown_kid(
    jwks_server: respx.MockRouter, clock: FakeClock
) -> None:
    new_kid = "rotated-2026-06"
    rotated = {"keys": [*EHR_JWKS["keys"], public_jwk(OTHER_RSA_KEY, new_kid, use="sig")]}
    route = jwks_server.get(EHR_JKU).mock(
        side_effect=[
            httpx.Response(200, json=EHR_JWKS),
            httpx.Response(200, json=rotated),
        ]
    )

    def new_token() -> str:
        return jwt.encode(
            claims(iat=int(clock.now), exp=int(clock.now) + 300),
            OTHER_RSA_KEY,
            algorithm="RS384",
            headers={"kid": new_kid, "jku": EHR_JKU},
        )

    async with httpx.AsyncClient() as http:
        verifier = JwtVerifier(policy(), http=http, clock=clock)
        await verifier.verify(f"Bearer {ehr_token()}", SERVICE_URL)
        assert route.call_count == 1
        # Within a minute of the last fetch an unknown kid does not reach the network.
        clock.now += 30
        await rejected(verifier, f"Bearer {new_token()}", SERVICE_URL)
        assert route.call_count == 1
        # After that, one refetch picks up the new key; the old key still works.
        clock.now += 31
        result = await verifier.verify(f"Bearer {new_token()}", SERVICE_URL)
        assert result.kid == new_kid
        await verifier.verify(f"Bearer {ehr_token(claims(iat=int(clock.now)))}", SERVICE_URL)
        assert route.call_count == 2


async def test_stale_jwks_is_refetched_after_its_ttl(
    jwks_server: respx.MockRouter, verifier: JwtVerifier, clock: FakeClock
) -> None:
    await verifier.verify(f"Bearer {ehr_token()}", SERVICE_URL)
    clock.now += 3601
    await verifier.verify(
        f"Bearer {ehr_token(claims(iat=int(clock.now), exp=int(clock.now) + 300))}", SERVICE_URL
    )
    assert jwks_server.routes[0].call_count == 2


# --- rejected: claims ------------------------------------------------------------------------


async def test_aud_of_another_service_is_rejected(verifier: JwtVerifier) -> None:
    token = ehr_token(claims(aud=OTHER_SERVICE_URL))
    message = await rejected(verifier, f"Bearer {token}", SERVICE_URL)
    assert message == f"the JWT aud does not name this endpoint ('{SERVICE_URL}')"


async def test_aud_of_the_service_is_rejected_at_its_feedback_endpoint(
    verifier: JwtVerifier,
) -> None:
    message = await rejected(verifier, f"Bearer {ehr_token()}", FEEDBACK_URL)
    assert "aud does not name this endpoint" in message


async def test_missing_aud_is_rejected(verifier: JwtVerifier) -> None:
    token = ehr_token(claims(aud=None))
    assert await rejected(verifier, f"Bearer {token}", SERVICE_URL) == "the JWT has no aud claim"


async def test_expired_token_is_rejected(verifier: JwtVerifier, clock: FakeClock) -> None:
    token = ehr_token()
    clock.now = NOW + 300 + 60
    assert await rejected(verifier, f"Bearer {token}", SERVICE_URL) == "the JWT has expired"


async def test_missing_exp_is_rejected(verifier: JwtVerifier) -> None:
    token = ehr_token(claims(exp=None))
    assert await rejected(verifier, f"Bearer {token}", SERVICE_URL) == "the JWT has no exp claim"


async def test_missing_iat_is_rejected(verifier: JwtVerifier) -> None:
    token = ehr_token(claims(iat=None))
    assert await rejected(verifier, f"Bearer {token}", SERVICE_URL) == "the JWT has no iat claim"


async def test_iat_in_the_future_is_rejected(verifier: JwtVerifier) -> None:
    token = ehr_token(claims(iat=int(NOW) + 120, exp=int(NOW) + 400))
    message = await rejected(verifier, f"Bearer {token}", SERVICE_URL)
    assert message == "the JWT iat is in the future"


async def test_lifetime_over_the_maximum_is_rejected(verifier: JwtVerifier) -> None:
    token = ehr_token(claims(exp=int(NOW) + 3601))
    message = await rejected(verifier, f"Bearer {token}", SERVICE_URL)
    assert message == "the JWT lifetime exp - iat is 3601 s, over 3600 s"


async def test_nbf_in_the_future_is_rejected(verifier: JwtVerifier) -> None:
    token = ehr_token(claims(nbf=int(NOW) + 120))
    message = await rejected(verifier, f"Bearer {token}", SERVICE_URL)
    assert message == "the JWT is not valid yet (nbf)"


async def test_missing_jti_is_rejected(verifier: JwtVerifier) -> None:
    token = ehr_token(claims(jti=None))
    assert await rejected(verifier, f"Bearer {token}", SERVICE_URL) == "the JWT has no jti claim"


async def test_replayed_jti_is_rejected(verifier: JwtVerifier) -> None:
    token = ehr_token()
    await verifier.verify(f"Bearer {token}", SERVICE_URL)
    message = await rejected(verifier, f"Bearer {token}", SERVICE_URL)
    assert message.startswith("jti '") and message.endswith(f"from '{EHR_ISS}' was already used")


async def test_reused_jti_in_a_new_token_is_rejected(verifier: JwtVerifier) -> None:
    await verifier.verify(f"Bearer {ehr_token(claims(jti='fixed'))}", SERVICE_URL)
    token = ehr_token(claims(jti="fixed", iat=int(NOW) + 1))
    message = await rejected(verifier, f"Bearer {token}", SERVICE_URL)
    assert message == f"jti 'fixed' from '{EHR_ISS}' was already used"


async def test_rejected_token_does_not_use_up_its_jti(verifier: JwtVerifier) -> None:
    await rejected(verifier, f"Bearer {ehr_token(claims(jti='j1'))}", OTHER_SERVICE_URL)
    await verifier.verify(f"Bearer {ehr_token(claims(jti='j1'))}", SERVICE_URL)


# --- policy and replay cache -----------------------------------------------------------------


def test_policy_refuses_symmetric_and_none_algorithms() -> None:
    for alg in ("HS256", "none", "EdDSA"):
        with pytest.raises(ConfigError, match="not permitted"):
            policy(algorithms=frozenset({"RS384", alg}))


def test_policy_refuses_an_issuer_without_keys() -> None:
    with pytest.raises(ConfigError, match="neither a jku allowlist nor a JWKS"):
        JwtPolicy(issuers={EHR_ISS: IssuerTrust()})


async def test_replay_cache_forgets_after_expiry(clock: FakeClock) -> None:
    cache = InMemoryReplayCache(clock=clock)
    assert await cache.remember("a", NOW + 10)
    assert not await cache.remember("a", NOW + 10)
    clock.now = NOW + 10
    assert await cache.remember("a", NOW + 20)


async def test_replay_cache_is_bounded_and_drops_the_soonest_expiry(clock: FakeClock) -> None:
    cache = InMemoryReplayCache(max_entries=2, clock=clock)
    assert await cache.remember("late", NOW + 100)
    assert await cache.remember("soon", NOW + 10)
    assert await cache.remember("third", NOW + 50)
    assert len(cache) == 2
    assert not await cache.remember("late", NOW + 100)
    assert await cache.remember("soon", NOW + 10)


@pytest.mark.anyio
async def test_shared_replay_cache_is_shared_between_processes(storage_target: str) -> None:
    # Two server processes (or replicas on PostgreSQL) open the same database: a jti seen by
    # one is a replay for the other.
    from fhir_leuko.cdshooks.auth import DatabaseReplayCache

    now = [1000.0]
    first = DatabaseReplayCache(storage_target, clock=lambda: now[0])
    second = DatabaseReplayCache(storage_target, clock=lambda: now[0])
    assert await first.remember("iss|jti-1", until=1300.0)
    assert not await second.remember("iss|jti-1", until=1300.0)
    now[0] = 1301.0  # expired: forgotten, so the table does not grow without bound
    assert await second.remember("iss|jti-1", until=1600.0)
    first.close()
    second.close()


# --- rejected: numeric claims that compare false with everything ------------------------------


def ehr_token_raw(payload_json: str, **headers: Any) -> str:
    """An RS384 token over the payload text exactly as given (PyJWT would re-encode a dict)."""
    header = {"kid": EHR_KID, "jku": EHR_JKU, **headers}
    return jwt.PyJWS().encode(payload_json.encode(), RSA_KEY, algorithm="RS384", headers=header)


def payload_text(**raw: str) -> str:
    """A valid payload's JSON with some claims replaced by raw JSON text (e.g. ``NaN``)."""
    fields = {k: json.dumps(v) for k, v in claims().items()}
    fields.update(raw)
    return "{" + ", ".join(f'"{k}": {v}' for k, v in fields.items()) + "}"


@pytest.mark.parametrize(
    "raw",
    [
        {"exp": "NaN"},
        {"exp": "Infinity"},
        {"iat": "NaN"},
        {"iat": "-Infinity"},
        {"nbf": "NaN"},
        {"exp": "1e400"},
        {"exp": "1" + "0" * 400},
        {"exp": "1" + "0" * 5000},
    ],
    ids=lambda raw: f"{next(iter(raw))}={next(iter(raw.values()))[:12]}",
)
async def test_non_finite_or_unparseable_time_claims_are_rejected(
    verifier: JwtVerifier, raw: dict[str, str]
) -> None:
    # NaN compares false with everything: exp = NaN never expired, iat = NaN escaped the
    # lifetime cap. JSON has no NaN or Infinity; a number too large for a double is refused too.
    token = ehr_token_raw(payload_text(**raw))
    message = await rejected(verifier, f"Bearer {token}", SERVICE_URL)
    assert message == "the JWT payload is not a JSON object"


@pytest.mark.parametrize(
    ("claim", "value", "reason"),
    [
        ("exp", 1e300, "is out of range"),
        ("exp", 10**30, "is out of range"),
        ("iat", -1, "is out of range"),
        ("exp", 2**63, "is out of range"),
        ("iat", True, "is not a number"),
        ("exp", "1800000300", "is not a number"),
        ("nbf", [1], "is not a number"),
    ],
)
async def test_time_claims_outside_a_date_are_rejected(
    verifier: JwtVerifier, claim: str, value: object, reason: str
) -> None:
    token = ehr_token(claims(**{claim: value}))
    message = await rejected(verifier, f"Bearer {token}", SERVICE_URL)
    assert message == f"the JWT {claim} claim {reason}"


async def test_nan_claims_are_rejected_even_without_the_json_layer(clock: FakeClock) -> None:
    verifier = JwtVerifier(policy(), clock=clock)
    for name in ("exp", "iat", "nbf"):
        payload = {**claims(), name: float("nan")}
        with pytest.raises(AuthError, match=f"the JWT {name} claim is not a finite number"):
            verifier._check_claims(payload, SERVICE_URL, kid=EHR_KID, alg="RS384")
    await verifier.aclose()


async def test_fractional_time_claims_are_accepted(verifier: JwtVerifier) -> None:
    # RFC 7519 2: a NumericDate may have a fraction.
    token = ehr_token(claims(iat=NOW + 0.25, exp=NOW + 300.5))
    result = await verifier.verify(f"Bearer {token}", SERVICE_URL)
    assert result.exp - result.iat == 300.25


@pytest.mark.parametrize("part", ["header", "payload"])
async def test_deeply_nested_token_json_is_rejected_not_a_crash(
    verifier: JwtVerifier, part: str
) -> None:
    nested = "[" * 5000 + "]" * 5000
    header = {"alg": "RS384", "typ": "JWT", "kid": EHR_KID, "jku": EHR_JKU}
    header_text = json.dumps(header)
    body_text = json.dumps(claims())
    if part == "header":
        header_text = header_text[:-1] + f', "x": {nested}}}'
    else:
        body_text = body_text[:-1] + f', "x": {nested}}}'
    token = f"{b64url(header_text.encode())}.{b64url(body_text.encode())}.{b64url(b'0' * 256)}"
    message = await rejected(verifier, f"Bearer {token}", SERVICE_URL)
    assert message in {
        "the Bearer token is not a well-formed JWT",
        "the JWT payload is not a JSON object",
    }
