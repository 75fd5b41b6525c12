"""The API key check: `Authorization: Key <key>`, as fal_client sends it (`FAL_KEY`).

Keys come from the environment variables that `ingress.api_key_env` names (never from a config
file). When any key is configured, every model route (sync, stream, queue) requires one; `/health`,
`/ready`, `/docs` and `/files` (unguessable URLs) stay open."""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass

from fastapi import Request
from starlette.exceptions import HTTPException

ANONYMOUS = "anonymous"


@dataclass(frozen=True)
class Identity:
    """Who calls: `user_id` (shown in webhooks) and `owner`, a hash of the whole key that the queue
    records with each job, so only the key that submitted a job can read or cancel it ("" when
    API keys are off)."""

    user_id: str = ANONYMOUS
    owner: str = ""


def owner_of(key: str) -> str:
    """The owner hash of a key (never the key itself)."""
    return hashlib.sha256(b"serve_app-owner:" + key.encode()).hexdigest()[:32]


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
        self._keys = [(k.encode(), Identity(user_id_for(k), owner_of(k))) for k in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def __call__(self, request: Request) -> str:
        if not self._keys:
            return ANONYMOUS
        return self.authenticate(request.headers.get("authorization", ""))

    def identity(self, request: Request) -> Identity:
        """FastAPI dependency: the caller's `Identity`; 401 on a missing or unknown key."""
        if not self._keys:
            return Identity()
        return self.identify(request.headers.get("authorization", ""))

    def authenticate(self, authorization: str, query_key: str | None = None) -> str:
        """The user id for an `Authorization` header value (or, for browsers' WebSockets, which
        can't send headers, a `fal_key` query parameter); raises a 401 HTTPException."""
        return self.identify(authorization, query_key).user_id

    def identify(self, authorization: str, query_key: str | None = None) -> Identity:
        """The `Identity` behind an `Authorization` header value (or a `fal_key` query parameter);
        raises a 401 HTTPException."""
        if not self._keys:
            return Identity()
        scheme, _, token = authorization.partition(" ")
        if (scheme.lower() != "key" or not token.strip()) and query_key:
            scheme, token = "key", query_key
        if scheme.lower() != "key" or not token.strip():
            raise HTTPException(401, "Missing API key: send `Authorization: Key <key>`.",
                                headers={"WWW-Authenticate": "Key"})
        given = token.strip().encode()
        for key, identity in self._keys:
            if hmac.compare_digest(given, key):
                return identity
        raise HTTPException(401, "Invalid API key.", headers={"WWW-Authenticate": "Key"})
