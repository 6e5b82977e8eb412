"""API keys: a file maps each key to a tenant and the policies that tenant may use.

JSON or TOML (by the file's suffix; anything else is tried as JSON, then TOML):

    {"keys": {"sk-tenant-a-1": {"tenant": "tenant-a", "policies": ["tenant-a-ko"],
                                "default_policy": "tenant-a-ko"},
              "sk-ops": {"tenant": "ops", "policies": "*"}}}

`policies` lists policy ids, or "*" for every policy; `default_policy` (optional) is used
for a request that names no policy (otherwise GUARDIAN_DEFAULT_POLICY / `serve --policy`).
No file configured means an open API: every request is the anonymous tenant with every
policy. Keys are kept as SHA-256 digests and looked up by digest.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path


class KeysFileError(ValueError):
    """A keys file that cannot be used, with the file and the reason."""


@dataclass(frozen=True)
class Tenant:
    name: str
    #: Allowed policy ids; None = every policy.
    policies: frozenset[str] | None = None
    default_policy: str | None = None

    def allows(self, policy_id: str) -> bool:
        return self.policies is None or policy_id in self.policies


OPEN = Tenant("anonymous")


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class KeyStore:
    def __init__(self, tenants_by_key: dict[str, Tenant] | None) -> None:
        #: None = open API (no keys file)
        self._by_digest = (
            None if tenants_by_key is None
            else {_digest(k): t for k, t in tenants_by_key.items()}
        )

    @property
    def open(self) -> bool:
        return self._by_digest is None

    def tenants(self) -> list[Tenant]:
        return [] if self._by_digest is None else list(self._by_digest.values())

    def tenant_for(self, key: str | None) -> Tenant | None:
        """The key's tenant; None for a missing or unknown key (open API: OPEN always)."""
        if self._by_digest is None:
            return OPEN
        if not key:
            return None
        return self._by_digest.get(_digest(key))

    @classmethod
    def from_file(cls, path: str | Path | None) -> KeyStore:
        if not path:
            return cls(None)
        return cls(load_keys_file(path))


def _parse(path: Path, text: str) -> dict:
    if path.suffix.lower() == ".toml":
        return tomllib.loads(text)
    if path.suffix.lower() == ".json":
        return json.loads(text)
    try:
        return json.loads(text)
    except ValueError:
        return tomllib.loads(text)


def load_keys_file(path: str | Path) -> dict[str, Tenant]:
    path = Path(path)
    try:
        data = _parse(path, path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KeysFileError(f"API keys file {path} does not exist") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSON and TOML errors are ValueErrors
        raise KeysFileError(f"API keys file {path}: not valid JSON/TOML: {exc}") from None
    keys = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(keys, dict):
        raise KeysFileError(f"API keys file {path}: needs a 'keys' table of key -> tenant")
    out: dict[str, Tenant] = {}
    for key, entry in keys.items():
        where = f"API keys file {path}: key {key[:6]}..."
        if not isinstance(key, str) or len(key) < 8:
            raise KeysFileError(f"{where}: a key must be a string of 8 characters or more")
        if not isinstance(entry, dict) or not isinstance(entry.get("tenant"), str):
            raise KeysFileError(f"{where}: needs a 'tenant' name")
        unknown = set(entry) - {"tenant", "policies", "default_policy"}
        if unknown:
            raise KeysFileError(f"{where}: unknown fields {sorted(unknown)}")
        policies = entry.get("policies", "*")
        if policies == "*":
            allowed = None
        elif isinstance(policies, list) and all(isinstance(p, str) for p in policies):
            allowed = frozenset(policies)
        else:
            raise KeysFileError(f"{where}: 'policies' must be a list of policy ids or \"*\"")
        default = entry.get("default_policy")
        if default is not None and not isinstance(default, str):
            raise KeysFileError(f"{where}: 'default_policy' must be a policy id")
        out[key] = Tenant(entry["tenant"], allowed, default)
    return out
