"""Signing keys for tests, made once per test run (RSA key generation is the slow part), and
the JWKS, PEM and token helpers every test that signs a JWT or a SMART client assertion uses.

The ``rsa_key``, ``ec_key`` and ``jwks_file`` fixtures of ``tests/conftest.py`` hand these out;
modules that sign at import time or in plain helpers import them from here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
# A second RSA key: a token signed with it must fail against RSA_KEY's JWKS.
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP384R1())

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def public_jwk(key: PrivateKey, kid: str, **extra: str) -> dict[str, Any]:
    """The public half of ``key`` as a JWK with ``kid`` (and e.g. ``use="sig"``)."""
    if isinstance(key, rsa.RSAPrivateKey):
        jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    else:
        jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {**jwk, "kid": kid, **extra}


def write_jwks(path: Path, *jwks: dict[str, Any]) -> Path:
    """A JWKS file holding ``jwks`` (as an issuer's ``jwks_file``)."""
    path.write_text(json.dumps({"keys": list(jwks)}))
    return path


def private_pem(key: PrivateKey = RSA_KEY) -> bytes:
    """``key`` as an unencrypted PKCS#8 PEM (a SMART Backend Services key file)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def sign(claims: dict[str, Any], kid: str, key: PrivateKey = RSA_KEY, **headers: Any) -> str:
    """A JWT of ``claims`` signed with ``key`` (RS384 for RSA, ES384 for P-384)."""
    algorithm = "RS384" if isinstance(key, rsa.RSAPrivateKey) else "ES384"
    return jwt.encode(claims, key, algorithm=algorithm, headers={"kid": kid, **headers})
