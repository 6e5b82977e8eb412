"""Redis verdict cache: the same text under the same policy and model gets the same verdict.

Key = sha256 over (normalised text, policy id@version, model version), so a new policy or
model version never serves a stale verdict. Value = the verdict JSON; on a hit the id (and
created_at) are re-stamped for the asking query. Redis is an optimisation, never a
dependency: every error or timeout counts in `guardian_cache_errors_total` and the batch goes
to the model. After an error the cache is bypassed for `cooldown_s` so a dead Redis costs one
short timeout per cooldown, not one per batch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
import unicodedata
from typing import Any

from stream import metrics

log = logging.getLogger(__name__)

_WS = re.compile(r"\s+")


def normalise_text(text: str) -> str:
    """NFKC, collapse whitespace, trim: trivially different spellings share an entry."""
    return _WS.sub(" ", unicodedata.normalize("NFKC", text)).strip()


def cache_key(text: str, policy_key: str, model_version: str) -> str:
    payload = json.dumps([normalise_text(text), policy_key, model_version], ensure_ascii=False)
    return "guardian:v1:" + hashlib.sha256(payload.encode("utf-8")).hexdigest()


class VerdictCache:
    """Async get-many / set-many over redis.asyncio with short timeouts and a breaker."""

    def __init__(
        self, url: str, ttl_s: int, *, timeout_s: float = 0.25, cooldown_s: float = 5.0
    ) -> None:
        self.url = url
        self.ttl_s = ttl_s
        self.cooldown_s = cooldown_s
        self._down_until = 0.0
        self._client = None
        if url:
            import redis.asyncio as aioredis

            self._client = aioredis.Redis.from_url(
                url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                retry_on_timeout=False,
            )

    @property
    def enabled(self) -> bool:
        return self._client is not None and time.monotonic() >= self._down_until

    def _failed(self, exc: BaseException) -> None:
        metrics.CACHE_ERRORS.inc()
        self._down_until = time.monotonic() + self.cooldown_s
        log.warning("redis cache unavailable (%s); bypassing for %.0fs", exc, self.cooldown_s)

    async def get_many(self, keys: list[str]) -> list[dict[str, Any] | None]:
        if not keys or not self.enabled:
            return [None] * len(keys)
        try:
            values = await self._client.mget(keys)
        except Exception as exc:  # noqa: BLE001 - any Redis failure means "no cache"
            self._failed(exc)
            return [None] * len(keys)
        out: list[dict[str, Any] | None] = []
        for v in values:
            try:
                out.append(json.loads(v) if v else None)
            except ValueError:
                out.append(None)
        return out

    async def set_many(self, items: dict[str, str]) -> None:
        if not items or not self.enabled:
            return
        try:
            pipe = self._client.pipeline(transaction=False)
            for k, v in items.items():
                pipe.set(k, v, ex=self.ttl_s)
            await pipe.execute()
        except Exception as exc:  # noqa: BLE001
            self._failed(exc)

    async def close(self) -> None:
        if self._client is not None:
            try:
                await self._client.aclose()
            except Exception:  # noqa: BLE001
                pass
