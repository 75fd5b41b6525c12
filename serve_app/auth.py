"""The API key check: `Authorization: Key <key>`, as fal_client sends it (`FAL_KEY`).

Keys come from the environment variables that `ingress.api_key_env` names (never from a config
file). When any key is configured, every model route (sync, stream, queue) requires one; `/health`,
`/ready`, `/docs` and `/files` (unguessable URLs) stay open."""

from __future__ import annotations

import hashlib
import hmac
import os

from fastapi import Request
from starlette.exceptions import HTTPException

ANONYMOUS = "anonymous"


def user_id_for(key: str) -> str:
    """The user id a key stands for (webhook `X-Fal-Webhook-User-Id`): the `id` of an `id:secret`
    key, else a short hash, so the key itself never leaves the server."""
    key_id, sep, _ = key.partition(":")
    return key_id if sep and key_id else hashlib.sha256(key.encode()).hexdigest()[:16]


def api_keys_from_env(names: list[str]) -> list[str]:
    """Accepted API keys from the named environment variables (comma-separated values allowed);
    raises if a named variable is missing, so a misconfigured server fails at start."""
    keys: list[str] = []
    for name in names:
        value = os.environ.get(name)
        if not value:
            raise ValueError(f"api_key_env names {name!r}, which is not set")
        keys.extend(k.strip() for k in value.split(",") if k.strip())
    return keys


class ApiKeyAuth:
    """FastAPI dependency returning the caller's user id; 401 on a missing or unknown key.
    With no keys configured every caller is `anonymous`."""

    def __init__(self, keys: list[str]) -> None:
        self._keys = [(k.encode(), user_id_for(k)) for k in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def __call__(self, request: Request) -> str:
        if not self._keys:
            return ANONYMOUS
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "key" or not token.strip():
            raise HTTPException(401, "Missing API key: send `Authorization: Key <key>`.",
                                headers={"WWW-Authenticate": "Key"})
        given = token.strip().encode()
        for key, user_id in self._keys:
            if hmac.compare_digest(given, key):
                return user_id
        raise HTTPException(401, "Invalid API key.", headers={"WWW-Authenticate": "Key"})
