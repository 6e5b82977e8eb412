"""Model registry on disk: `registry_dir/versions/vN/` folders and a `current` pointer file.

It lives in model/ because serving reads it (`GUARDIAN_ADAPTER=current` or `=v3`) and an
operator moves it (`guardian model promote / rollback`) without any training code; the
trainer only adds versions.

- Each version folder is what training wrote (a peft adapter, or a full model) plus a
  `registry.json` entry: version, state (candidate | current | retired), parent, data_hash,
  eval (a path or a summary dict), created_at, promoted_at.
- The pointer is one line ("vN") replaced atomically (write a temp file, fsync,
  os.replace), so a reader sees the old or the new version, never half of one. The pointer
  is the truth and moves first; the entries follow. An entry read back is reconciled with
  it (the pointer's version reads "current", a stale "current" reads "retired"), so a crash
  between the two writes leaves states that are still right.
- `promote(..., merge=True)` also writes `vN/merged/`, the adapter folded into its base,
  which the vLLM backend serves for that version (vLLM cannot apply trained token rows).
- `publish_current(redis_url)` mirrors the pointer to Redis key `registry:current` so
  workers on other machines can notice a promotion.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

from model.loading import MODEL_META_FILE, ModelNotFoundError

VERSION_RE = re.compile(r"v(\d+)")
POINTER = "current"
ENTRY_FILE = "registry.json"
MERGED_DIR = "merged"
REDIS_KEY = "registry:current"
STATES = ("candidate", "current", "retired")
State = Literal["candidate", "current", "retired"]

log = logging.getLogger(__name__)


class UnknownVersionError(ModelNotFoundError):
    """A version the registry does not hold (or no current version where one is needed)."""


class RegistryError(ValueError):
    """A registry operation that cannot be done in the registry's present state."""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def atomic_write_text(path: Path, text: str) -> None:
    """Write a temp file beside `path`, fsync it, os.replace it: all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class RegistryEntry:
    version: str
    state: State = "candidate"
    parent: str | None = None
    data_hash: str | None = None
    eval: str | dict | None = None
    created_at: str | None = None
    promoted_at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RegistryEntry:
        known = {k: data.get(k) for k in cls.__dataclass_fields__ if k in data}
        if known.get("state") not in STATES:
            known["state"] = "candidate"
        return cls(**known)


class Registry:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.versions = self.root / "versions"

    # --- reading --------------------------------------------------------------------

    def list_versions(self) -> list[str]:
        if not self.versions.is_dir():
            return []
        found = [
            p.name for p in self.versions.iterdir() if p.is_dir() and VERSION_RE.fullmatch(p.name)
        ]
        return sorted(found, key=lambda v: int(v[1:]))

    def next_version(self, after: str | None = None) -> str:
        """The next free vN; `after` (the version serving now, e.g. the shipped v3 when the
        registry is still empty) keeps a new version from reusing an older number."""
        vs = self.list_versions()
        n = int(vs[-1][1:]) if vs else 0
        if after and VERSION_RE.fullmatch(after):
            n = max(n, int(after[1:]))
        return f"v{n + 1}"

    def path(self, version: str) -> Path:
        return self.versions / version

    def require(self, version: str) -> Path:
        """The folder of `version`, or an error listing what the registry holds."""
        folder = self.path(version)
        if not VERSION_RE.fullmatch(version) or not folder.is_dir():
            held = ", ".join(self.list_versions()) or "none"
            raise UnknownVersionError(
                f"no version {version!r} in the registry {self.root} (versions: {held}; "
                "see `guardian model list`)"
            )
        return folder

    def serving_path(self, version: str, backend: str = "transformers") -> Path:
        """The folder a backend loads for `version`: vLLM prefers the merged copy."""
        folder = self.require(version)
        merged = folder / MERGED_DIR
        if backend == "vllm" and (merged / "config.json").is_file():
            return merged
        return folder

    def read_pointer(self) -> str | None:
        """The pointer file's content as written (None if absent or empty), without checking
        that the version folder exists: one small read, for workers polling it."""
        try:
            v = (self.root / POINTER).read_text().strip()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return v or None

    def current(self) -> str | None:
        p = self.root / POINTER
        if not p.is_file():
            return None
        v = p.read_text().strip()
        return v if v and self.path(v).is_dir() else None

    def current_path(self) -> Path | None:
        v = self.current()
        return self.path(v) if v else None

    def entry(self, version: str) -> RegistryEntry:
        """The version's entry; folders written before entries existed get one made up."""
        folder = self.require(version)
        path = folder / ENTRY_FILE
        if path.is_file():
            entry = RegistryEntry.from_dict(json.loads(path.read_text()))
            entry = replace(entry, version=version)
        else:
            meta_path = folder / MODEL_META_FILE
            meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
            created = meta.get("created_at") or time.strftime(
                "%Y-%m-%dT%H:%M:%SZ", time.gmtime(folder.stat().st_mtime)
            )
            entry = RegistryEntry(version=version, created_at=created)
        current = self.current()
        if version == current:
            return replace(entry, state="current")
        if entry.state == "current":  # the pointer moved on (or a promote stopped halfway)
            return replace(entry, state="retired")
        return entry

    def list(self) -> list[RegistryEntry]:
        return [self.entry(v) for v in self.list_versions()]

    # --- writing --------------------------------------------------------------------

    def _write_entry(self, entry: RegistryEntry) -> None:
        atomic_write_text(
            self.path(entry.version) / ENTRY_FILE, json.dumps(entry.to_dict(), indent=2) + "\n"
        )

    def _point_to(self, version: str) -> None:
        atomic_write_text(self.root / POINTER, version + "\n")

    def register(
        self,
        version: str,
        *,
        parent: str | None = None,
        data_hash: str | None = None,
        eval: str | dict | None = None,
    ) -> RegistryEntry:
        """Record a freshly written version folder as a candidate."""
        self.require(version)
        entry = RegistryEntry(
            version=version,
            state="candidate",
            parent=parent,
            data_hash=data_hash,
            eval=eval,
            created_at=self.entry(version).created_at or _now(),
        )
        self._write_entry(entry)
        return entry

    def promote(self, version: str, *, merge: bool = False, settings=None) -> RegistryEntry:
        """Make `version` current; the old current becomes retired.

        `merge=True` first writes `vN/merged/` for vLLM; it loads the real base, so it is
        opt-in, and a failed merge leaves serving untouched.
        """
        folder = self.require(version)
        if merge:
            self.merge(version, settings)
        old = self.current()
        entry = self.entry(version)
        old_entry = self.entry(old) if old is not None and old != version else None
        self._point_to(folder.name)
        if old_entry is not None:
            self._write_entry(replace(old_entry, state="retired"))
        promoted = replace(
            entry,
            state="current",
            parent=entry.parent if entry.parent or old == version else old,
            promoted_at=_now(),
        )
        self._write_entry(promoted)
        return promoted

    def merge(self, version: str, settings=None) -> Path | None:
        """Write `vN/merged/` (the adapter folded into its base); None for a full model."""
        from model.loading import merge_adapter
        from model.settings import GuardianSettings

        folder = self.require(version)
        if not (folder / "adapter_config.json").is_file():
            return None  # already a full model folder: vLLM serves it as it is
        settings = settings or GuardianSettings()
        with_adapter = settings.model_copy(update={"adapter": str(folder)})
        return merge_adapter(with_adapter, folder / MERGED_DIR)

    def rollback(self) -> RegistryEntry:
        """Point back at the previous current: the current's parent, else the last retired."""
        current = self.current()
        if current is None:
            raise RegistryError(f"the registry {self.root} has no current version to roll back")
        entries = {e.version: e for e in self.list()}
        parent = entries[current].parent
        if parent in entries and parent != current:
            target = parent
        else:
            retired = [e for e in entries.values() if e.state == "retired" and e.version != current]
            if not retired:
                raise RegistryError(
                    f"{current} has no parent or retired version to roll back to in {self.root}"
                )
            retired.sort(key=lambda e: (e.promoted_at or "", int(e.version[1:])))
            target = retired[-1].version
        self._point_to(target)
        self._write_entry(replace(entries[current], state="retired"))
        back = replace(entries[target], state="current", promoted_at=_now())
        self._write_entry(back)
        return back

    def publish_current(self, redis_url: str | None) -> bool:
        """Mirror the pointer to Redis (`registry:current`); a logged no-op without a URL."""
        if not redis_url:
            log.warning("no Redis URL (GUARDIAN_REDIS_URL): registry pointer not published")
            return False
        version = self.current()
        if version is None:
            log.warning("registry %s has no current version: nothing published", self.root)
            return False
        import redis

        client = redis.Redis.from_url(redis_url)
        try:
            client.set(REDIS_KEY, version)
        finally:
            client.close()
        return True
