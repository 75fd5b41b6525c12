"""fal's webhook: the payload posted to `fal_webhook` when a job completes, its signature, and
one delivery attempt (the store schedules retries with `backoff_s`).

Payload: `{"request_id", "gateway_request_id", "status": "OK"|"ERROR", "payload", "error"}`; for an
ERROR the payload is the error body (`{"detail": ...}`) and `error` reads `Invalid status code: N`.
Headers use fal's names; the signature is hex HMAC-SHA256 with a shared secret (fal uses ED25519
with published keys) over `request_id \\n user_id \\n timestamp \\n sha256hex(body)`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import httpx

from serve_app.queue.settings import WebhookSettings
from serve_app.queue.state import Job, JobState
from serve_app.urlpolicy import BlockedAddress, GuardedTransport, UrlPolicy

logger = logging.getLogger("ray.serve")

REQUEST_ID_HEADER = "X-Fal-Webhook-Request-Id"
USER_ID_HEADER = "X-Fal-Webhook-User-Id"
TIMESTAMP_HEADER = "X-Fal-Webhook-Timestamp"
SIGNATURE_HEADER = "X-Fal-Webhook-Signature"


def webhook_payload(job: Job) -> dict[str, Any]:
    """The JSON body posted for a finished job."""
    ok = job.state == JobState.SUCCEEDED
    return {
        "request_id": job.request_id,
        "gateway_request_id": job.gateway_request_id or job.request_id,
        "status": "OK" if ok else "ERROR",
        "payload": job.result if ok else {"detail": job.result},
        "error": None if ok else f"Invalid status code: {job.status_code}",
    }


def signature(secret: bytes, request_id: str, user_id: str, timestamp: str, body: bytes) -> str:
    """Hex HMAC-SHA256 of `request_id\\nuser_id\\ntimestamp\\nsha256hex(body)`."""
    message = "\n".join((request_id, user_id, timestamp, hashlib.sha256(body).hexdigest())).encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def signed_headers(secret: bytes | None, request_id: str, user_id: str, body: bytes, now: float) -> dict[str, str]:
    """The webhook headers; the signature only when there is a secret."""
    timestamp = str(int(now))
    headers = {
        "content-type": "application/json",
        REQUEST_ID_HEADER: request_id,
        USER_ID_HEADER: user_id,
        TIMESTAMP_HEADER: timestamp,
    }
    if secret is not None:
        headers[SIGNATURE_HEADER] = signature(secret, request_id, user_id, timestamp, body)
    return headers


def verify(secret: bytes, headers: Mapping[str, str], body: bytes, now: float | None = None,
           tolerance_s: float = 300.0) -> bool:
    """For receivers: whether a delivery is signed with `secret` and recent (replay window)."""
    lower = {k.lower(): v for k, v in headers.items()}
    try:
        request_id = lower[REQUEST_ID_HEADER.lower()]
        user_id = lower[USER_ID_HEADER.lower()]
        timestamp = lower[TIMESTAMP_HEADER.lower()]
        given = lower[SIGNATURE_HEADER.lower()]
        age = abs((time.time() if now is None else now) - int(timestamp))
    except (KeyError, ValueError):
        return False
    expected = signature(secret, request_id, user_id, timestamp, body)
    return age <= tolerance_s and hmac.compare_digest(expected, given)


class WebhookRefused(Exception):
    """The webhook's host is not one the URL policy lets the server reach: never retried."""


class WebhookSender:
    """Posts webhook payloads; one call is one attempt. Every connection goes through the URL
    policy (`serve_app.urlpolicy`, plus `settings.allow`), so a webhook can't reach the server's
    own network; redirects are not followed."""

    def __init__(self, settings: WebhookSettings, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.settings = settings
        self.secret = settings.secret()
        self.policy = UrlPolicy.from_env(settings.allow)
        self._client = httpx.AsyncClient(timeout=settings.timeout_s, follow_redirects=False, trust_env=False,
                                         transport=transport or GuardedTransport(self.policy))

    def backoff(self, attempts_done: int) -> float:
        """Seconds to wait before the next attempt after `attempts_done` failed ones."""
        return float(min(self.settings.backoff_s * 2 ** max(attempts_done - 1, 0), self.settings.max_backoff_s))

    async def deliver(self, job: Job) -> bool:
        """One attempt to post `job`'s payload to its webhook; True on a 2xx answer.

        Raises:
            WebhookRefused: the URL policy refuses the host (retrying can't help).
        """
        if job.webhook_url is None:
            return True
        body = json.dumps(webhook_payload(job), separators=(",", ":")).encode()
        headers = signed_headers(self.secret, job.request_id, job.user_id, body, time.time())
        try:
            response = await self._client.post(job.webhook_url, content=body, headers=headers)
        except BlockedAddress as exc:
            raise WebhookRefused(str(exc)) from exc
        except httpx.HTTPError as exc:
            logger.warning("webhook for %s to %s failed: %r", job.request_id, job.webhook_url, exc)
            return False
        if 200 <= response.status_code < 300:
            return True
        logger.warning("webhook for %s to %s answered %d", job.request_id, job.webhook_url, response.status_code)
        return False

    async def aclose(self) -> None:
        await self._client.aclose()
