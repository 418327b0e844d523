"""JOSE helpers (JWS/JWT/JWK via joserfc, the successor of authlib.jose): signing keys, signing, verifying.

Verification here checks the signature and the algorithm only; the claims (exp, aud, ...) are the caller's
business, because access tokens and client assertions follow different rules."""
from __future__ import annotations

import base64
import json
from collections.abc import Collection
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc import jwt
from joserfc.errors import JoseError as _LibraryError
from joserfc.jwk import ECKey, KeySet, RSAKey

SIGNING_ALG = "RS256"
# RFC 9068 token type: an access token cannot be passed off as an id_token or a client assertion
ACCESS_TOKEN_TYPE = "at+jwt"  # noqa: S105 (a media type, not a secret)


class JoseError(ValueError):
    """A token or key that cannot be used; the message is safe to show to the client."""


def new_signing_key() -> tuple[str, str, dict[str, Any]]:
    """A fresh RSA-2048 key: (kid, private key PEM, public JWK)."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    key = RSAKey.import_key(pem)
    public = key.as_dict(private=False)
    kid = key.thumbprint()
    public.update(kid=kid, alg=SIGNING_ALG, use="sig")
    return kid, pem, public


def sign(claims: dict[str, Any], private_pem: str, kid: str, typ: str = "JWT") -> str:
    key = RSAKey.import_key(private_pem)
    return jwt.encode({"alg": SIGNING_ALG, "kid": kid, "typ": typ}, claims, key, algorithms=[SIGNING_ALG])


def _b64json(part: str) -> dict[str, Any]:
    try:
        value = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (ValueError, UnicodeDecodeError) as exc:
        raise JoseError("The token is not a well-formed JWT") from exc
    if not isinstance(value, dict):
        raise JoseError("The token is not a well-formed JWT")
    return value


def unverified_header(token: str) -> dict[str, Any]:
    """The JOSE header, read before any key is chosen (never trusted beyond choosing the key)."""
    parts = token.split(".")
    if len(parts) != 3 or not all(parts[:2]):
        raise JoseError("The token is not a compact JWS (header.payload.signature)")
    return _b64json(parts[0])


def unverified_claims(token: str) -> dict[str, Any]:
    """The payload, unverified: only to find out which client claims to have signed an assertion."""
    unverified_header(token)
    return _b64json(token.split(".")[1])


def _import(jwk: dict[str, Any]) -> RSAKey | ECKey:
    try:
        if jwk.get("kty") == "RSA":
            return RSAKey.import_key(jwk)
        if jwk.get("kty") == "EC":
            return ECKey.import_key(jwk)
    except (_LibraryError, ValueError, TypeError) as exc:
        raise JoseError(f"Unusable JWK: {exc}") from exc
    raise JoseError(f"Unsupported key type {jwk.get('kty')!r}")


def verify(token: str, jwk: dict[str, Any], algorithms: Collection[str]) -> dict[str, Any]:
    """Claims of a JWS signed by `jwk` with one of `algorithms` (never 'none'); raises JoseError."""
    alg = unverified_header(token).get("alg")
    if alg not in algorithms or alg == "none":
        raise JoseError(f"Signing algorithm {alg!r} is not accepted here (accepted: {', '.join(algorithms)})")
    try:
        token_obj = jwt.decode(token, _import(jwk), algorithms=[str(alg)])
    except _LibraryError as exc:
        raise JoseError("The token signature is invalid") from exc
    except (ValueError, TypeError) as exc:
        raise JoseError("The token is not a well-formed JWT") from exc
    return dict(token_obj.claims)


def candidate_keys(jwks: dict[str, Any], header: dict[str, Any]) -> list[dict[str, Any]]:
    """The keys of a JWK Set that may have signed a token with this header (by kid, else by key type)."""
    keys = [k for k in jwks.get("keys", []) if isinstance(k, dict)]
    kty = {"RS": "RSA", "PS": "RSA", "ES": "EC"}.get(str(header.get("alg", ""))[:2])
    if header.get("kid") is not None:
        keys = [k for k in keys if k.get("kid") == header["kid"]]
    return [k for k in keys if k.get("kty") == kty and k.get("use", "sig") == "sig"]


def verify_with_jwks(token: str, jwks: dict[str, Any], algorithms: Collection[str]) -> dict[str, Any]:
    """Claims of a JWS signed by a key of the set `jwks`; raises JoseError."""
    keys = candidate_keys(jwks, unverified_header(token))
    if not keys:
        raise JoseError("No registered key matches the token's kid and algorithm")
    last: JoseError | None = None
    for key in keys:
        try:
            return verify(token, key, algorithms)
        except JoseError as exc:
            last = exc
    assert last is not None
    raise last


def check_jwks(jwks: Any) -> dict[str, Any]:
    """A client's JWK Set, checked to hold only public keys we can use; raises JoseError."""
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list) or not jwks["keys"]:
        raise JoseError('A JWK Set is an object {"keys": [...]} with at least one key')
    for key in jwks["keys"]:
        if not isinstance(key, dict) or "d" in key:
            raise JoseError("A client JWK Set must hold public keys only")
        _import(key)
    try:
        KeySet.import_key_set(jwks)  # type: ignore[arg-type]
    except (_LibraryError, ValueError, TypeError) as exc:
        raise JoseError(f"Unusable JWK Set: {exc}") from exc
    return jwks

