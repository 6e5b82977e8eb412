"""Workers follow the registry (GUARDIAN_FOLLOW_REGISTRY=true): notice a promotion, load it
beside the serving version, switch between batches.

Which pointer: the registry's `current` file (model/registry.py) and, when GUARDIAN_REDIS_URL
is set, the Redis key `registry:current` that `guardian model promote --publish` writes for
workers on other machines. Both are one small read, done every GUARDIAN_REGISTRY_POLL_S
seconds. The first look takes the file (the registry's truth; Redis when there is no file);
after that, whichever of the two *changes* names the wanted version (Redis when both change
at once). So a promotion made without `--publish` is still noticed through the file, and a
published one reaches a machine whose copy of the file lags behind, while a Redis key left
over from an old publish is not followed until it changes.

Loading happens in its own thread (the model thread keeps judging batches with the serving
version meanwhile); the pipeline then swaps backends under its batch lock, so a batch is
judged by one version from start to end, and the stream itself is never touched: no record
is dropped or judged twice because of a switch. A version that fails to load (missing
folder, bad adapter) is logged with the reason and left alone until the pointer moves or
`retry_after_s` has passed; the serving version keeps serving.

The loading itself is model/'s (`model.backends.create_backend(settings, ref)`); this
module only decides when.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from model.registry import REDIS_KEY, VERSION_RE, Registry
from model.settings import GuardianSettings
from stream import metrics

log = logging.getLogger("guardian.stream.registry")

#: Seconds before a version that failed to load is tried again (while the pointer stays).
RETRY_AFTER_S = 60.0
_UNKNOWN = object()  # Redis could not be read: neither a value nor "no value"


def _default_load(settings: GuardianSettings, version: str):
    from model.backends import create_backend

    return create_backend(settings, version)


class RegistryFollower:
    """Decides when to load which registry version; the pipeline swaps what it returns."""

    def __init__(
        self,
        settings: GuardianSettings,
        executor: Executor,
        *,
        serving: str,
        load: Callable[[GuardianSettings, str], Any] | None = None,
        retry_after_s: float = RETRY_AFTER_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.registry = Registry(settings.registry_dir)
        self.executor = executor
        self.serving = serving
        self.retry_after_s = retry_after_s
        self._load = load or _default_load
        self._clock = clock
        self._redis = None
        if settings.redis_url:
            import redis.asyncio as aioredis

            self._redis = aioredis.Redis.from_url(
                settings.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5,
                retry_on_timeout=False,
            )
        self._redis_ok = True
        self._seen: dict[str, str | None] | None = None
        self.wanted: str | None = None
        self.loading: str | None = None
        self.failed: tuple[str, float] | None = None  # (version, when) of the last failure
        self.last_error: str | None = None
        self._ignored: set[str] = set()

    # -- reading the pointer ----------------------------------------------------------
    async def _redis_pointer(self):
        if self._redis is None:
            return None
        try:
            raw = await self._redis.get(REDIS_KEY)
        except Exception as exc:  # noqa: BLE001 - Redis is optional: keep the last value
            if self._redis_ok:
                log.warning("cannot read %s from Redis (%s): following the registry file "
                            "only until it answers", REDIS_KEY, exc)
            self._redis_ok = False
            return _UNKNOWN
        self._redis_ok = True
        if raw is None:
            return None
        value = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        return value.strip() or None

    async def pointer(self) -> str | None:
        """The version the registry wants served now (see the module docstring)."""
        try:
            file_v = self.registry.read_pointer()
        except OSError as exc:
            log.warning("cannot read the registry pointer in %s: %s", self.registry.root, exc)
            file_v = self._seen.get("file") if self._seen else None
        redis_v = await self._redis_pointer()
        if redis_v is _UNKNOWN:
            redis_v = self._seen.get("redis") if self._seen else None
        now = {"file": file_v, "redis": redis_v}
        if self._seen is None:
            self.wanted = file_v or redis_v
        else:
            changed = [now[s] for s in ("redis", "file") if now[s] and now[s] != self._seen[s]]
            if changed:
                self.wanted = changed[0]
        self._seen = now
        return self.wanted

    # -- deciding and loading ---------------------------------------------------------
    async def poll(self) -> tuple[str, Any] | None:
        """Look at the pointer; when it names a version other than the serving one, load it
        (in the loader thread) and return (version, backend) for the caller to switch to.
        None when there is nothing to do or the load failed (logged)."""
        wanted = await self.pointer()
        if wanted is None or wanted == self.serving:
            return None
        if not VERSION_RE.fullmatch(wanted):
            if wanted not in self._ignored:
                self._ignored.add(wanted)
                log.warning("registry pointer %r is not a version like v3: ignored, still "
                            "serving %s", wanted, self.serving)
            return None
        if (self.failed is not None and self.failed[0] == wanted
                and self._clock() - self.failed[1] < self.retry_after_s):
            return None  # failed a moment ago for this same pointer: wait for a change
        log.info("registry pointer names %s (serving %s): loading it", wanted, self.serving)
        self.loading = wanted
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        try:
            backend = await loop.run_in_executor(self.executor, self._load, self.settings,
                                                 wanted)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a bad version must not stop the serving one
            reason = f"{type(exc).__name__}: {exc}"
            self.failed = (wanted, self._clock())
            self.last_error = reason
            metrics.REGISTRY_LOADS.labels("failed").inc()
            log.warning("could not load registry version %s (%s); still serving %s, next "
                        "try when the pointer moves or in %.0fs", wanted, reason,
                        self.serving, self.retry_after_s,
                        exc_info=not isinstance(exc, FileNotFoundError))
            return None
        finally:
            self.loading = None
        self.failed = None
        self.last_error = None
        metrics.REGISTRY_LOADS.labels("loaded").inc()
        log.info("registry version %s loaded in %.1fs", wanted, time.perf_counter() - t0)
        return wanted, backend

    def switched(self, version: str) -> None:
        self.serving = version

    def status(self) -> dict[str, Any]:
        return {
            "registry_dir": str(self.registry.root),
            "pointer": self.wanted,
            "serving": self.serving,
            "loading": self.loading,
            "last_error": self.last_error,
        }

    async def close(self) -> None:
        if self._redis is not None:
            try:
                await self._redis.aclose()
            except Exception:  # noqa: BLE001
                pass
