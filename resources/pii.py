"""The key that pseudonymises PII fields (HMAC-SHA256), and the pseudonymisation itself.

Production sets `MEDALLION_PII_KEY` (from a secret store). The embedded default generates a random key once
under `$MEDALLION_HOME/secrets/pii.key` (mode 0600), so pseudonyms are stable across runs of one home and
re-deriving Silver from Bronze gives the same values. Rotating the key changes every pseudonym: re-derive.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets

import polars as pl

from resources.settings import load_settings

ENV = "MEDALLION_PII_KEY"


def pii_key() -> bytes:
    value = os.environ.get(ENV)
    if value:
        return value.encode()
    path = load_settings().home / "secrets" / "pii.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        os.replace(tmp, path)  # two processes racing both write a valid key; the last one wins before any use
    return path.read_text().strip().encode()


def pseudonymise(values: pl.Series, key: bytes) -> pl.Series:
    """HMAC-SHA256 hex of each value (nulls stay null), hashed once per distinct value."""
    distinct = values.drop_nulls().unique()
    digests = [hmac.new(key, v.encode(), hashlib.sha256).hexdigest() for v in distinct.to_list()]
    mapping = dict(zip(distinct.to_list(), digests))
    return values.replace_strict(mapping, default=None, return_dtype=pl.String).alias(values.name)
