"""Moderation policies: per-tenant, per-locale rules applied on top of one trained model.

A policy changes what the same model output means (blocked categories, threshold) and what
the model is asked (force-harm rules append `<|harm|>`; the response language token), so a
tenant's rules change by editing a versioned TOML file, never by retraining.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from model.language import SUPPORTED_LANGUAGES, detect_language
from model.taxonomy import CATEGORY_IDS

BUILTIN_POLICY_DIR = Path(__file__).with_name("policies")
#: A record that names no policy gets the default policy of its detected language.
AUTO = "auto"
DEFAULT_BY_LANGUAGE = {"ko": "default-ko", "en": "default-en"}
RESPONSE_MODES = ("generate", "template", "none")


class PolicyError(ValueError):
    """A policy file that cannot be used, with the file and the reason."""


@dataclass(frozen=True)
class ForceHarmRule:
    name: str
    pattern: re.Pattern[str]
    #: The category the verdict reports when this rule forced it (None: the model's pick).
    category: str | None = None

    def matches(self, text: str) -> bool:
        return self.pattern.search(text) is not None


@dataclass(frozen=True)
class Policy:
    id: str
    version: str
    locale: str = "en"
    description: str = ""
    #: Categories that make a verdict unsafe; a predicted category not listed here passes.
    blocked: frozenset[str] = frozenset(CATEGORY_IDS)
    #: Unsafe-score at or above which the model's unsafe label is taken.
    threshold: float = 0.5
    #: Scores within this distance below the threshold are flagged for review.
    near_threshold_margin: float = 0.15
    #: "auto" answers in the query's language; otherwise a fixed language.
    response_language: str = "auto"
    #: How an unsafe verdict gets its safety response: "generate" (the model writes it),
    #: "template" (a stock response of the category and language, instant), "none".
    response_mode: str = "generate"
    force_harm: tuple[ForceHarmRule, ...] = ()
    source: str = ""
    #: Named thresholds chosen on the dev split, with the dev figures they were chosen by
    #: ({"strict": {"threshold": .., "dev_precision": .., "dev_recall": .., ...}, ...}).
    operating_points: tuple[tuple[str, tuple[tuple[str, float], ...]], ...] = ()
    operating_point: str = ""

    def points(self) -> dict[str, dict[str, float]]:
        return {name: dict(vals) for name, vals in self.operating_points}

    def at(self, point: str) -> Policy:
        """This policy with the threshold of another of its operating points."""
        import dataclasses

        pts = self.points()
        if point not in pts:
            raise PolicyError(
                f"policy {self.id} has no operating point {point!r}; known: {sorted(pts)}"
            )
        return dataclasses.replace(self, threshold=pts[point]["threshold"], operating_point=point)

    def forced_rule(self, text: str) -> ForceHarmRule | None:
        for rule in self.force_harm:
            if rule.matches(text):
                return rule
        return None

    def response_language_for(self, query_language: str) -> str:
        return query_language if self.response_language == "auto" else self.response_language

    def near_threshold(self, unsafe_score: float) -> bool:
        return self.threshold - self.near_threshold_margin <= unsafe_score < self.threshold

    @property
    def key(self) -> str:
        return f"{self.id}@{self.version}"


def _fail(source: str, msg: str) -> PolicyError:
    return PolicyError(f"policy {source}: {msg}")


def _is_unit(value) -> bool:
    """A number (not a bool) between 0 and 1: thresholds, margins, dev figures."""
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1


def policy_from_dict(data: dict, source: str = "<dict>") -> Policy:
    """Validate a parsed policy document; every problem names the file and the key."""
    known = {
        "id", "version", "locale", "description", "blocked", "allowed", "threshold",
        "near_threshold_margin", "response_language", "response_mode", "force_harm",
        "operating_points",
        "operating_point",
    }
    unknown = set(data) - known
    if unknown:
        raise _fail(source, f"unknown keys {sorted(unknown)}")
    for key in ("id", "version"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            raise _fail(source, f"'{key}' must be a non-empty string")
    if "blocked" in data and "allowed" in data:
        raise _fail(source, "give 'blocked' or 'allowed', not both")
    if "allowed" in data:
        listed = data["allowed"]
    else:
        listed = data.get("blocked", "all")
    if listed == "all":
        listed = list(CATEGORY_IDS)
    if not isinstance(listed, list) or not all(isinstance(c, str) for c in listed):
        raise _fail(source, "'blocked'/'allowed' must be a list of category ids or \"all\"")
    bad = [c for c in listed if c not in CATEGORY_IDS]
    if bad:
        raise _fail(source, f"unknown categories {bad}; known: {list(CATEGORY_IDS)}")
    blocked = frozenset(CATEGORY_IDS) - set(listed) if "allowed" in data else frozenset(listed)
    threshold = data.get("threshold", 0.5)
    margin = data.get("near_threshold_margin", 0.15)
    for key, value in (("threshold", threshold), ("near_threshold_margin", margin)):
        if not _is_unit(value):
            raise _fail(source, f"'{key}' must be a number between 0 and 1")
    lang = data.get("response_language", "auto")
    if lang != "auto" and lang not in SUPPORTED_LANGUAGES:
        raise _fail(source, f"'response_language' must be auto or one of {SUPPORTED_LANGUAGES}")
    mode = data.get("response_mode", "generate")
    if mode not in RESPONSE_MODES:
        raise _fail(source, f"'response_mode' must be one of {RESPONSE_MODES}")
    rules = []
    for i, raw in enumerate(data.get("force_harm", [])):
        if not isinstance(raw, dict):
            raise _fail(source, f"force_harm[{i}] must be a table")
        name = raw.get("name", f"rule{i}")
        if ("keyword" in raw) == ("regex" in raw):
            raise _fail(source, f"force_harm[{i}] needs exactly one of 'keyword' or 'regex'")
        try:
            if "keyword" in raw:
                pattern = re.compile(re.escape(str(raw["keyword"])), re.IGNORECASE)
            else:
                pattern = re.compile(str(raw["regex"]), re.IGNORECASE)
        except re.error as exc:
            raise _fail(source, f"force_harm[{i}] regex does not compile: {exc}") from None
        category = raw.get("category")
        if category is not None and category not in CATEGORY_IDS:
            raise _fail(source, f"force_harm[{i}] unknown category {category!r}")
        unknown_rule = set(raw) - {"name", "keyword", "regex", "category"}
        if unknown_rule:
            raise _fail(source, f"force_harm[{i}] unknown keys {sorted(unknown_rule)}")
        rules.append(ForceHarmRule(name=str(name), pattern=pattern, category=category))
    points = []
    raw_points = data.get("operating_points", {})
    if not isinstance(raw_points, dict):
        raise _fail(source, "'operating_points' must be a table of tables")
    for name, vals in raw_points.items():
        if not isinstance(vals, dict) or "threshold" not in vals:
            raise _fail(source, f"operating_points.{name} needs a threshold")
        for key, value in vals.items():
            if not _is_unit(value):
                raise _fail(source, f"operating_points.{name}.{key} must be between 0 and 1")
        points.append((str(name), tuple((k, float(v)) for k, v in vals.items())))
    point = data.get("operating_point", "")
    if point:
        if point not in raw_points:
            raise _fail(source, f"operating_point {point!r} is not in operating_points")
        chosen = float(raw_points[point]["threshold"])
        if "threshold" in data and abs(float(threshold) - chosen) > 1e-9:
            raise _fail(source, f"threshold differs from operating point {point!r}: give one")
        threshold = chosen
    return Policy(
        id=data["id"].strip(),
        version=data["version"].strip(),
        locale=str(data.get("locale", "en")),
        description=str(data.get("description", "")),
        blocked=blocked,
        threshold=float(threshold),
        near_threshold_margin=float(margin),
        response_language=lang,
        response_mode=mode,
        force_harm=tuple(rules),
        source=source,
        operating_points=tuple(points),
        operating_point=str(point),
    )


def load_policy_file(path: str | Path) -> Policy:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PolicyError(f"policy file {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise _fail(str(path), f"not valid TOML: {exc}") from None
    return policy_from_dict(data, source=str(path))


class PolicyStore:
    """All policies known to a process: the built-in ones plus those in extra folders.

    A later folder's policy with the same id replaces an earlier one, so an operator can
    override a default by dropping a file with its id into GUARDIAN_POLICY_DIR.
    """

    def __init__(
        self, *dirs: str | Path | None, by_language: dict[str, str] | None = None
    ) -> None:
        self.by_language = dict(DEFAULT_BY_LANGUAGE if by_language is None else by_language)
        self._policies: dict[str, Policy] = {}
        for d in (BUILTIN_POLICY_DIR, *dirs):
            if d is None:
                continue
            d = Path(d)
            if not d.is_dir():
                raise PolicyError(f"policy folder {d} does not exist")
            for path in sorted(d.glob("*.toml")):
                policy = load_policy_file(path)
                self._policies[policy.id] = policy

    def ids(self) -> list[str]:
        return sorted(self._policies)

    def get(self, policy_id: str) -> Policy:
        try:
            return self._policies[policy_id]
        except KeyError:
            raise PolicyError(
                f"unknown policy {policy_id!r}; known: {', '.join(self.ids())}"
            ) from None

    @classmethod
    def from_settings(cls, settings) -> PolicyStore:
        """The built-ins, GUARDIAN_POLICY_DIR and the language defaults of the settings."""
        return cls(settings.policy_dir or None, by_language=settings.default_policies)

    def for_text(self, ref: str | None, text: str) -> Policy:
        """The policy a record gets: the one it names, or with `auto` (or nothing) the
        default policy of the text's detected language."""
        if not ref or ref == AUTO:
            lang = detect_language(text)
            ref = self.by_language.get(lang) or self.by_language.get("en") or "default-en"
        return self.get(ref)

    def resolve(self, ref: str) -> Policy:
        """A policy id, or a path to a policy file."""
        if ref in self._policies:
            return self._policies[ref]
        if ref.endswith(".toml") or Path(ref).is_file():
            return load_policy_file(ref)
        return self.get(ref)
