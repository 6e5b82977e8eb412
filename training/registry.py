"""Model registry on disk: `registry_dir/versions/vN/` folders and a `current` pointer file.

The pointer is one line ("vN") replaced atomically (write a temp file, fsync, os.replace),
so a reader sees the old or the new version, never half of one. Serving points
GUARDIAN_ADAPTER at `registry_dir/versions/<current>`.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

_V = re.compile(r"v(\d+)")
POINTER = "current"


class Registry:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.versions = self.root / "versions"

    def list_versions(self) -> list[str]:
        if not self.versions.is_dir():
            return []
        found = [p.name for p in self.versions.iterdir() if p.is_dir() and _V.fullmatch(p.name)]
        return sorted(found, key=lambda v: int(v[1:]))

    def next_version(self) -> str:
        vs = self.list_versions()
        return f"v{int(vs[-1][1:]) + 1 if vs else 1}"

    def path(self, version: str) -> Path:
        return self.versions / version

    def current(self) -> str | None:
        p = self.root / POINTER
        if not p.is_file():
            return None
        v = p.read_text().strip()
        return v if v and self.path(v).is_dir() else None

    def current_path(self) -> Path | None:
        v = self.current()
        return self.path(v) if v else None

    def promote(self, version: str) -> None:
        if not self.path(version).is_dir():
            raise FileNotFoundError(f"no version {version} in {self.versions}")
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".current-")
        with os.fdopen(fd, "w") as f:
            f.write(version + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.root / POINTER)
