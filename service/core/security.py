"""API tokens: high-entropy random strings, stored only as SHA-256 hashes.

A plain hash (no salt, no KDF) is sufficient because the tokens carry 256 bits of entropy: there is
nothing to brute-force, and an indexed lookup by hash keeps authentication O(1).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

TOKEN_PREFIX = "ramp_"
DRIVER_TOKEN_PREFIX = "rampjob_"


def generate_token(prefix: str = TOKEN_PREFIX) -> str:
    return prefix + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def token_matches(token: str, token_hash: str | None) -> bool:
    """Constant-time check of a presented token against a stored hash."""
    if not token_hash:
        return False
    return hmac.compare_digest(hash_token(token), token_hash)
