"""A configured key set (``jwks_file``) is trusted whatever ``jku`` the token names.

Some clients, the public CDS Hooks sandbox among them, always put a ``jku`` in the header.
A site that configured the client's keys out of band must still accept its tokens, and
must still never fetch the URL the token chose: the key comes from the site's own file.
"""

from __future__ import annotations

import jwt
import pytest
import respx
from test_auth import (  # the fixtures and keys of the verifier's main tests
    EVIL_JKU,
    OOB_ISS,
    OOB_KID,
    OTHER_RSA_KEY,
    RSA_KEY,
    SERVICE_URL,
    anyio_backend,  # noqa: F401
    claims,
    clock,  # noqa: F401
    jwks_server,  # noqa: F401
    rejected,
    verifier,  # noqa: F401
)

from fhir_leuko.cdshooks.auth import JwtVerifier

pytestmark = pytest.mark.anyio


def _token(key: object, kid: str, jku: str) -> str:
    return jwt.encode(claims(iss=OOB_ISS), key, algorithm="RS384", headers={"kid": kid, "jku": jku})


async def test_a_configured_key_is_used_when_the_token_names_a_jku_and_nothing_is_fetched(
    verifier: JwtVerifier,  # noqa: F811
    jwks_server: respx.MockRouter,  # noqa: F811
) -> None:
    result = await verifier.verify(f"Bearer {_token(RSA_KEY, OOB_KID, EVIL_JKU)}", SERVICE_URL)
    assert result.iss == OOB_ISS
    assert not jwks_server.calls


async def test_a_token_signed_with_its_own_key_is_still_refused(
    verifier: JwtVerifier,  # noqa: F811
    jwks_server: respx.MockRouter,  # noqa: F811
) -> None:
    # The configured kid, but another key: the jku cannot bring the signer's own key in.
    token = _token(OTHER_RSA_KEY, OOB_KID, EVIL_JKU)
    message = await rejected(verifier, f"Bearer {token}", SERVICE_URL)
    assert "signature" in message.lower()
    assert not jwks_server.calls


async def test_a_kid_outside_the_configured_set_with_a_foreign_jku_is_refused(
    verifier: JwtVerifier,  # noqa: F811
    jwks_server: respx.MockRouter,  # noqa: F811
) -> None:
    message = await rejected(
        verifier, f"Bearer {_token(RSA_KEY, 'not-configured', EVIL_JKU)}", SERVICE_URL
    )
    assert message == f"jku '{EVIL_JKU}' is not on the allowlist of '{OOB_ISS}'"
    assert not jwks_server.calls
