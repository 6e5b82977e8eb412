"""One answer to "what gets loaded": a model reference -> a `ResolvedModel`.

Before this module the transformers loader, the vLLM backend and the trainer each decided
on their own which folder held the weights, where the tokenizer and the token map came
from and which version to record, and they had drifted apart (vLLM served a full model
folder as if it were a LoRA adapter; the trainer ignored an adapter's token map). Every
loader now asks `resolve_model` and only does the loading. Resolving reads a few small JSON
files and never touches weights, so it is cheap enough for CLIs and health checks.

A reference is one of:

- None or "default": what the settings say (GUARDIAN_ADAPTER; "default" is the shipped
  guardian on the prepared base, nothing on any other base);
- "none" or "": the bare base (GUARDIAN_BASE_MODEL or the prepared Gemma);
- "current" or a registry version such as "v3": a folder of the registry (model/registry.py);
- a path to a peft adapter folder (adapter_config.json), to a merged / fully fine-tuned
  guardian folder (config.json with guardian_tokens.json), or to a plain Hugging Face
  model folder (config.json, no guardian files), which is then used as the base.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from model.loading import (
    MODEL_META_FILE,
    ModelNotFoundError,
    base_dir_for,
    load_token_map,
    read_model_meta,
)
from model.prompt import TOKEN_MAP_FILE, GuardianTokens
from model.registry import VERSION_RE, Registry, UnknownVersionError
from model.settings import GuardianSettings

__all__ = [
    "AdapterBaseMismatchError",
    "MissingTokenMapError",
    "ModelPathNotFoundError",
    "NotAModelError",
    "ResolvedModel",
    "UnknownVersionError",
    "resolve_model",
]


class ModelPathNotFoundError(ModelNotFoundError):
    """The reference is a path (or looks like one) and nothing is there."""


class NotAModelError(ModelNotFoundError):
    """The folder exists but holds neither a peft adapter nor a model."""


class AdapterBaseMismatchError(ModelNotFoundError):
    """The adapter records a base other than the one it would be loaded onto."""


class MissingTokenMapError(ModelNotFoundError):
    """A trained guardian folder without guardian_tokens.json: its token ids are unknown."""


@dataclass(frozen=True)
class ResolvedModel:
    """Everything a loader needs to know, decided once.

    `token_map` is None only for a bare base without guardian_tokens.json: the loader then
    assigns the special tokens itself (reserved slots, or added tokens), as it always has.
    """

    kind: str  # "base" | "adapter" | "merged"
    base_dir: Path
    adapter_dir: Path | None
    weights_dir: Path
    tokenizer_dir: Path
    token_map: GuardianTokens | None
    token_map_dir: Path | None
    model_id: str
    version: str
    dtype: str
    ref: str = "default"

    def describe(self) -> dict:
        """A JSON-ready summary (for `guardian model resolve`, logs and health checks)."""
        return {
            "ref": self.ref,
            "kind": self.kind,
            "model_id": self.model_id,
            "version": self.version,
            "base_dir": str(self.base_dir),
            "adapter_dir": str(self.adapter_dir) if self.adapter_dir else None,
            "weights_dir": str(self.weights_dir),
            "tokenizer_dir": str(self.tokenizer_dir),
            "token_map": str(self.token_map_dir / TOKEN_MAP_FILE)
            if self.token_map_dir
            else "assigned at load (bare base)",
            "dtype": self.dtype,
        }


def _dtype_name(settings: GuardianSettings) -> str:
    # validated here (a bad GUARDIAN_DTYPE fails before any weights are read)
    return str(settings.resolved_dtype()).removeprefix("torch.")


def _base_names(base: Path) -> set[str]:
    names = {base.resolve().name, base.name}
    meta_id = read_model_meta(base).get("model_id")
    if meta_id:
        names.add(str(meta_id))
    return {n for n in names if n}


def _recorded_base(adapter: Path) -> str:
    try:
        config = json.loads((adapter / "adapter_config.json").read_text())
    except (OSError, ValueError):
        return ""
    return str(config.get("base_model_name_or_path") or "").strip()


def _check_base(adapter: Path, base: Path) -> None:
    """Refuse an adapter trained on another base; lenient when it records none.

    peft stores the base as a local path or a hub id; guardian's trainer stores the base
    folder's name. Either way the last path part is compared with the base's folder name
    and its guardian_model.json model_id.
    """
    recorded = _recorded_base(adapter)
    if not recorded:
        return
    name = Path(recorded.rstrip("/")).name
    known = _base_names(base)
    if name not in known:
        raise AdapterBaseMismatchError(
            f"adapter {adapter} was trained on base {recorded!r} but would be loaded onto "
            f"{base} ({', '.join(sorted(known))}): set GUARDIAN_BASE_MODEL to its base, or "
            "use an adapter trained on this base"
        )


def _meta_value(key: str, *folders: Path | None) -> str | None:
    """The last folder that has `key` in its guardian_model.json wins."""
    value = None
    for folder in folders:
        if folder is not None:
            value = read_model_meta(folder).get(key) or value
    return value


def _version(hint: str | None, settings: GuardianSettings, *folders: Path) -> str:
    """A registry name first, then GUARDIAN_MODEL_VERSION, then the folders' metadata."""
    return hint or settings.model_version or _meta_value("version", *folders) or "unversioned"


def _resolve_base(
    base: Path, settings: GuardianSettings, ref: str, version_hint: str | None = None
) -> ResolvedModel:
    tokens = load_token_map(base)
    return ResolvedModel(
        kind="base",
        base_dir=base,
        adapter_dir=None,
        weights_dir=base,
        tokenizer_dir=base,
        token_map=tokens,
        token_map_dir=base if tokens is not None else None,
        model_id=_meta_value("model_id", base) or base.name,
        version=_version(version_hint, settings, base),
        dtype=_dtype_name(settings),
        ref=ref,
    )


def _resolve_adapter(
    folder: Path, settings: GuardianSettings, ref: str, version_hint: str | None
) -> ResolvedModel:
    base = base_dir_for(settings)
    _check_base(folder, base)
    own = load_token_map(folder)
    tokens = own or load_token_map(base)
    if tokens is None:
        raise MissingTokenMapError(
            f"adapter {folder} has no {TOKEN_MAP_FILE} and neither has its base {base}: the "
            "guardian token ids it was trained with are unknown (retrain it, or copy the "
            "token map of the base it was trained on into the folder)"
        )
    tok_dir = folder if (folder / "tokenizer.json").is_file() else base
    return ResolvedModel(
        kind="adapter",
        base_dir=base,
        adapter_dir=folder,
        weights_dir=base,
        tokenizer_dir=tok_dir,
        token_map=tokens,
        token_map_dir=folder if own is not None else base,
        model_id=_meta_value("model_id", base, folder) or folder.name,
        version=_version(version_hint, settings, base, folder),
        dtype=_dtype_name(settings),
        ref=ref,
    )


def _resolve_model_folder(
    folder: Path, settings: GuardianSettings, ref: str, version_hint: str | None
) -> ResolvedModel:
    tokens = load_token_map(folder)
    if tokens is None:
        if (folder / MODEL_META_FILE).is_file():
            raise MissingTokenMapError(
                f"{folder} is a guardian model folder ({MODEL_META_FILE}) without "
                f"{TOKEN_MAP_FILE}: its guardian token ids are unknown (merge it again with "
                "`guardian model merge --out DIR`)"
            )
        # a plain Hugging Face model: it is the base, special tokens assigned at load
        return _resolve_base(folder, settings, ref, version_hint)
    has_tokenizer = (folder / "tokenizer.json").is_file()
    try:
        base = base_dir_for(settings)
    except ModelNotFoundError:
        if not has_tokenizer:
            raise
        base = folder  # self-contained: weights, tokenizer and token map are all here
    return ResolvedModel(
        kind="merged",
        base_dir=base,
        adapter_dir=None,
        weights_dir=folder,
        tokenizer_dir=folder if has_tokenizer else base,
        token_map=tokens,
        token_map_dir=folder,
        model_id=_meta_value("model_id", folder) or folder.name,
        version=_version(version_hint, settings, folder),
        dtype=_dtype_name(settings),
        ref=ref,
    )


def _resolve_folder(
    folder: Path, settings: GuardianSettings, ref: str, version_hint: str | None = None
) -> ResolvedModel:
    if not folder.is_dir():
        raise NotAModelError(f"{folder} is a file, not a model or adapter folder")
    if (folder / "adapter_config.json").is_file():
        return _resolve_adapter(folder, settings, ref, version_hint)
    if (folder / "config.json").is_file():
        return _resolve_model_folder(folder, settings, ref, version_hint)
    raise NotAModelError(
        f"{folder} is neither a peft adapter (adapter_config.json) nor a model folder "
        "(config.json)"
    )


def _resolve_registry(ref: str, settings: GuardianSettings) -> ResolvedModel:
    reg = Registry(settings.registry_dir)
    version = reg.current() if ref == "current" else ref
    if version is None:
        raise UnknownVersionError(
            f"the registry {reg.root} has no current version: run "
            "`guardian model promote VERSION` (see `guardian model list`)"
        )
    folder = reg.serving_path(version, settings.backend)  # raises for an unknown version
    # The registry name is the version a registry load records (verdicts' model_version,
    # cache keys), over GUARDIAN_MODEL_VERSION and the folder's metadata: a worker that
    # follows the registry must stamp each verdict with the version that made it.
    return _resolve_folder(folder, settings, ref, version_hint=version)


def resolve_model(settings: GuardianSettings, ref: str | Path | None = None) -> ResolvedModel:
    """Turn a model reference (see the module docstring) into one description.

    Raises a ModelNotFoundError subclass whose message says what is wrong or what to run.
    """
    raw = settings.adapter if ref is None else str(ref)
    text = raw.strip()
    if text in ("", "none"):
        return _resolve_base(base_dir_for(settings), settings, text or "none")
    if text == "default":
        base = base_dir_for(settings)  # first: a missing base says `guardian model prepare`
        shipped = settings.model_copy(update={"adapter": "default"}).resolved_adapter()
        if shipped is None:
            return _resolve_base(base, settings, text)
        return _resolve_folder(shipped, settings, text)
    if text == "current":
        return _resolve_registry(text, settings)
    path = Path(text).expanduser()
    if path.exists():
        return _resolve_folder(path, settings, text)
    if VERSION_RE.fullmatch(text):
        return _resolve_registry(text, settings)
    raise ModelPathNotFoundError(
        f"model {text} does not exist (a reference is 'default', 'none', 'current', a "
        "registry version like v3, or an adapter / model folder)"
    )
