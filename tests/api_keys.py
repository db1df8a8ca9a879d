"""API keys and stream signing secrets for tests, and the settings that configure them."""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass


@dataclass(frozen=True)
class TestKey:
    """A plain API key that a test sends, with the name and scopes it is configured with."""

    __test__ = False  # not a test class, despite its name

    name: str
    key: str
    scopes: tuple[str, ...]

    @property
    def headers(self) -> dict[str, str]:
        """The Authorization header that presents this key."""
        return {"Authorization": f"Bearer {self.key}"}


def make_key(name: str, *scopes: str) -> TestKey:
    """Return a new random key named `name` with `scopes`."""
    return TestKey(name, f"odin-test-{secrets.token_urlsafe(24)}", scopes)


def api_keys_setting(*keys: TestKey) -> str:
    """Return the ODIN_API_KEYS value that configures `keys`, by hash only."""
    return json.dumps(
        [
            {
                "name": key.name,
                "sha256": hashlib.sha256(key.key.encode()).hexdigest(),
                "scopes": list(key.scopes),
            }
            for key in keys
        ]
    )


def make_signing_secret() -> str:
    """Return a new random stream signing secret, long enough for ODIN_STREAM_SIGNING_KEYS."""
    return secrets.token_urlsafe(32)


def signing_keys_setting(*signing_secrets: str) -> str:
    """Return the ODIN_STREAM_SIGNING_KEYS value for `signing_secrets`, signing one first."""
    return json.dumps(list(signing_secrets))
