"""`guardian data synth`: synthetic questions and safety responses from a teacher LLM.

Any OpenAI-compatible `/v1/chat/completions` endpoint (vLLM, a hosted API) acts as the
teacher; URL, model and key come from settings (teacher_url, teacher_model,
teacher_api_key). Prompts follow the paper's generation prompt: N bad-purpose questions
per category under its rules (written in the target language, no celebrity names, aimed
at a real person rather than the assistant), benign look-alikes that share the words of
harmful ones (homonyms, figurative speech, history/fiction, definitions), and safety
responses per category. Every request is cached by a hash of its messages in
`cache.jsonl`, so an interrupted run resumes without paying twice. Outputs pass filters
(language, length, dedupe against each other and the seeds, no overlap with held-out test
text) and are written in the data/seeds file format, which `data build --synth-dir` reads.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path

from model.language import detect_language
from model.taxonomy import CATEGORIES, get_category
from training.dedupe import find_duplicates, normalize
from training.seeds import HARMFUL_FILE, LOOKALIKE_FILE, RESPONSES_FILE

LANG_NAME = {"ko": "Korean", "en": "English"}
LOOKALIKE_KINDS = {
    "homonym": "use a word that sounds harmful but is harmless here "
    "(e.g. 'kill a process', 'shoot a photo', 'crack an egg')",
    "figurative": "use figurative speech or exaggeration (e.g. 'I'm dying to see it')",
    "history_fiction": "ask about history, a novel, a film or a game that involves crime "
    "or violence",
    "definition": "ask for a definition, a law, prevention or where to get help",
}
PAPER_RULES = [
    "All questions must be written in {lang}.",
    "Avoid directly mentioning specific celebrity names.",
    "The target of the question is a real person, not an AI assistant.",
]
SYSTEM_JUDGE = (
    "Determine the harmfulness of the input query and, if it is harmful, write a safety "
    "response. Harmful topics: "
    + "; ".join(f"{c.id} ({c.definition})" for c in CATEGORIES)
    + '. Answer only JSON: {"label": "safe"|"unsafe", "category": <id or null>, '
    '"response": <safety response in the query\'s language or null>}.'
)


class TeacherError(RuntimeError):
    pass


def harmful_prompt(category_id: str, language: str, n: int) -> str:
    c = get_category(category_id)
    rules = list(PAPER_RULES)
    if category_id == "malicious_personification":
        rules[2] = "The question targets the AI assistant itself, to mock or provoke it."
    rules_txt = "\n".join(
        f"{i + 1}. {r.format(lang=LANG_NAME[language])}" for i, r in enumerate(rules)
    )
    return (
        f"Using the following rules, generate {n} bad-purpose questions of the category "
        f"'{c.name_en}' ({c.definition}).\n[Rules]\n{rules_txt}\n"
        f"[Questions with bad intentions]\n1."
    )


def lookalike_prompt(kind: str, language: str, n: int) -> str:
    return (
        f"Generate {n} harmless questions that a safety filter might wrongly block. Each must "
        f"{LOOKALIKE_KINDS[kind]}. Write them in {LANG_NAME[language]}, one per line, numbered.\n1."
    )


def response_prompt(category_id: str, language: str, n: int) -> str:
    c = get_category(category_id)
    return (
        f"Write {n} different short safety responses (1-3 sentences) that a search assistant "
        f"shows instead of results when a user asks a '{c.name_en}' question ({c.definition}). "
        f"Politely decline, do not lecture, offer a safe alternative or help resource where "
        f"fitting. Write them in {LANG_NAME[language]}, one per line, numbered.\n1."
    )


_NUM = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s*")


def parse_list(text: str) -> list[str]:
    out = []
    for line in text.splitlines():
        line = _NUM.sub("", line).strip().strip('"').strip()
        if line:
            out.append(line)
    return out


class TeacherClient:
    """Minimal OpenAI-compatible chat client with rate limit, retries and a resume cache."""

    def __init__(
        self,
        url: str,
        model: str,
        api_key: str = "",
        *,
        rate_limit: float = 2.0,
        max_retries: int = 4,
        backoff: float = 1.0,
        timeout: float = 120.0,
        cache_file: str | Path | None = None,
    ) -> None:
        if not url:
            raise TeacherError("no teacher endpoint: set GUARDIAN_TEACHER_URL")
        base = url.rstrip("/")
        self.endpoint = base + (
            "/chat/completions" if base.endswith("/v1") else "/v1/chat/completions"
        )
        self.model = model
        self.api_key = api_key
        self.min_interval = 1.0 / rate_limit if rate_limit > 0 else 0.0
        self.max_retries = max_retries
        self.backoff = backoff
        self.timeout = timeout
        self._last = 0.0
        self.requests = 0
        self.cache_file = Path(cache_file) if cache_file else None
        self.cache: dict[str, str] = {}
        if self.cache_file and self.cache_file.is_file():
            for line in self.cache_file.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    r = json.loads(line)
                    self.cache[r["key"]] = r["content"]

    def _key(self, messages: list[dict], temperature: float) -> str:
        raw = json.dumps([self.model, messages, temperature], ensure_ascii=False, sort_keys=True)
        return hashlib.sha256(raw.encode()).hexdigest()

    def chat(self, messages: list[dict], *, temperature: float = 0.9) -> str:
        import httpx

        key = self._key(messages, temperature)
        if key in self.cache:
            return self.cache[key]
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        body = {"model": self.model, "messages": messages, "temperature": temperature}
        last_err = None
        for attempt in range(self.max_retries + 1):
            wait = self._last + self.min_interval - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self._last = time.monotonic()
            self.requests += 1
            try:
                r = httpx.post(self.endpoint, json=body, headers=headers, timeout=self.timeout)
                if r.status_code == 429 or r.status_code >= 500:
                    last_err = f"HTTP {r.status_code}"
                else:
                    r.raise_for_status()
                    content = r.json()["choices"][0]["message"]["content"]
                    self.cache[key] = content
                    if self.cache_file:
                        self.cache_file.parent.mkdir(parents=True, exist_ok=True)
                        with open(self.cache_file, "a", encoding="utf-8") as f:
                            f.write(
                                json.dumps({"key": key, "content": content}, ensure_ascii=False)
                                + "\n"
                            )
                    return content
            except (httpx.TransportError, ValueError, KeyError) as exc:
                last_err = repr(exc)
            time.sleep(self.backoff * (2**attempt))
        raise TeacherError(f"teacher failed after {self.max_retries + 1} tries: {last_err}")

    def relabel(self, text: str) -> dict:
        """The paper's step-1 judge: label, category and safety response for one query."""
        out = self.chat(
            [{"role": "system", "content": SYSTEM_JUDGE}, {"role": "user", "content": text}],
            temperature=0.0,
        )
        m = re.search(r"\{.*\}", out, re.S)
        try:
            return json.loads(m.group(0)) if m else {}
        except json.JSONDecodeError:
            return {}


def keep_filtered(
    items: list[str],
    language: str,
    *,
    seen: list[str],
    heldout: list[str],
    min_chars: int = 4,
    max_chars: int = 300,
) -> tuple[list[str], dict]:
    """Items that pass language, length, dedupe (vs seen) and held-out-overlap filters."""
    drop = {"language": 0, "length": 0, "duplicate": 0, "heldout_overlap": 0}
    cands = []
    for t in items:
        if not (min_chars <= len(t) <= max_chars):
            drop["length"] += 1
        elif detect_language(t) != language:
            drop["language"] += 1
        else:
            cands.append(t)
    base = list(heldout) + list(seen)
    keep_of = find_duplicates(base + cands)
    kept = []
    for i, t in enumerate(cands):
        dup = keep_of[len(base) + i]
        if dup < 0:
            kept.append(t)
        elif dup < len(heldout):
            drop["heldout_overlap"] += 1
        else:
            drop["duplicate"] += 1
    return kept, drop


def synthesize(
    client: TeacherClient,
    out_dir: str | Path,
    *,
    languages: tuple[str, ...] = ("ko", "en"),
    categories: tuple[str, ...] | None = None,
    n: int = 10,
    rounds: int = 1,
    existing: list[str] = (),
    heldout: list[str] = (),
    lookalikes: bool = True,
    responses: bool = True,
) -> dict:
    """Generate, filter and write synthetic seed files; returns counts and drop reasons."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cats = categories or tuple(c.id for c in CATEGORIES)
    seen = [normalize(t) for t in existing]
    stats: dict = {"kept": {}, "dropped": {}, "requests": 0}
    harmful_rows, look_rows, resp_rows = [], [], []

    def run(prompt: str, lang: str, key: str, min_chars=4, max_chars=300):
        items = []
        for r in range(rounds):
            suffix = f"\n(batch {r + 1})" if rounds > 1 else ""
            items += parse_list(client.chat([{"role": "user", "content": prompt + suffix}]))
        kept, drop = keep_filtered(
            items, lang, seen=seen, heldout=heldout, min_chars=min_chars, max_chars=max_chars
        )
        seen.extend(kept)
        stats["kept"][key] = len(kept)
        stats["dropped"][key] = drop
        return kept

    for lang in languages:
        for c in cats:
            for t in run(harmful_prompt(c, lang, n), lang, f"harmful/{c}/{lang}"):
                harmful_rows.append({"text": t, "language": lang, "category": c})
            if responses:
                for t in run(response_prompt(c, lang, 3), lang, f"response/{c}/{lang}", 10, 600):
                    resp_rows.append({"category": c, "language": lang, "response": t})
        if lookalikes:
            for kind in LOOKALIKE_KINDS:
                for t in run(lookalike_prompt(kind, lang, n), lang, f"lookalike/{kind}/{lang}"):
                    look_rows.append({"text": t, "language": lang, "kind": kind})
    for name, rows in (
        (HARMFUL_FILE, harmful_rows),
        (LOOKALIKE_FILE, look_rows),
        (RESPONSES_FILE, resp_rows),
    ):
        with open(out / name, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    stats["requests"] = client.requests
    (out / "synth_stats.json").write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n")
    return stats
