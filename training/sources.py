"""Readers for the public files in data_dir: each yields raw examples mapped through mapping.py.

A reader that cannot find its file yields nothing and reports it (the build's stats list
missing sources), so a partial data folder still builds.
"""

from __future__ import annotations

import csv
import gzip
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from model.language import detect_language
from training.categorize import categorize
from training.mapping import KMHAS_PRIORITY, MULTIJAIL_TAGS, OPENAI_FLAG_PRIORITY, lookup


@dataclass
class RawExample:
    text: str
    label: str  # safe / unsafe
    category: str | None
    source: str
    language: str
    ambiguous: bool = False
    response: str | None = None
    near_category: str | None = None  # safe look-alikes: the category they resemble


def _mapped(
    source: str,
    source_label: str,
    text: str,
    language: str | None = None,
    *,
    default_category: str = "crime_advice",
    category: str | None = None,
    response: str | None = None,
):
    """Map one source row. `<keyword>` targets are categorised per item (categorize.py);
    `<tags>` targets take the category the reader worked out (`category`)."""
    text = (text or "").strip()
    if not text:
        return None
    m = lookup(source, source_label)
    if m.target is None:
        return None
    label = "safe" if m.target == "safe" else "unsafe"
    if label == "safe":
        cat = None
    elif m.target == "<keyword>":
        cat = categorize(text, default_category)
    elif m.target == "<tags>":
        if category is None:
            return None
        cat = category
    else:
        cat = m.target
    return RawExample(
        text=text,
        label=label,
        category=cat,
        source=source,
        language=language or detect_language(text),
        ambiguous=m.ambiguous,
        response=response,
    )


def read_openai_moderation(path: Path) -> Iterator[RawExample]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            flag = next((k for k in OPENAI_FLAG_PRIORITY if row.get(k) == 1), "none")
            ex = _mapped("openai_moderation", flag, row.get("prompt", ""))
            if ex:
                yield ex


def read_self_instruct(path: Path) -> Iterator[RawExample]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            text = row["instruction"]
            inst = (row.get("instances") or [{}])[0].get("input") or ""
            if inst:
                text = f"{text}\n{inst}"
            ex = _mapped("self_instruct", "*", text, "en")
            if ex:
                yield ex


def read_square(path: Path) -> Iterator[RawExample]:
    for row in json.loads(path.read_text(encoding="utf-8")):
        key = "0" if not row.get("sensitive?") else str(row.get("category") or "etc")
        ex = _mapped("square", key, row.get("question", ""), "ko")
        if ex:
            yield ex


def read_kosbi(path: Path, source: str = "kosbi") -> Iterator[RawExample]:
    """KoSBi sentences (the valid split, or the seed set under source "kosbi_demo")."""
    for row in json.loads(path.read_text(encoding="utf-8")):
        ex = _mapped(source, row["sentence_label"], row.get("sentence", ""), "ko")
        if ex:
            yield ex


def read_kocohub(path: Path) -> Iterator[RawExample]:
    with open(path, encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            ex = _mapped("kocohub", row["hate"], row["comments"], "ko")
            if ex:
                yield ex


def read_kmhas(path: Path) -> Iterator[RawExample]:
    with open(path, encoding="utf-8") as f:
        next(f)  # header: document \t label
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 2:
                continue
            labels = set(parts[1].split(","))
            key = next((k for k in KMHAS_PRIORITY if k in labels), "8")
            ex = _mapped("kmhas", key, parts[0], "ko")
            if ex:
                yield ex


def read_apeach(path: Path) -> Iterator[RawExample]:
    with open(path, encoding="utf-8") as f:
        for row in csv.DictReader(f):
            ex = _mapped("apeach", row["class"], row["text"], "ko")
            if ex:
                yield ex


def read_korquad(path: Path) -> Iterator[RawExample]:
    data = json.loads(path.read_text(encoding="utf-8"))
    for article in data["data"]:
        for para in article["paragraphs"]:
            for qa in para["qas"]:
                ex = _mapped("korquad", "*", qa["question"], "ko")
                if ex:
                    yield ex


def read_kdna(path: Path) -> Iterator[RawExample]:
    for row in json.loads(path.read_text(encoding="utf-8")):
        ex = _mapped("k-dna", row["category"], row.get("question", ""), "ko")
        if ex:
            yield ex


# --- English sources added for guardian v2 -------------------------------------------------


def read_advbench(path: Path) -> Iterator[RawExample]:
    with open(path, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            ex = _mapped("advbench", "*", row["goal"], "en")
            if ex:
                yield ex


def read_harmfulqa(path: Path) -> Iterator[RawExample]:
    for topic in json.loads(path.read_text(encoding="utf-8")).values():
        for questions in topic.values():
            for q in questions:
                ex = _mapped("harmfulqa", "*", q, "en")
                if ex:
                    yield ex


def read_catqa(path: Path) -> Iterator[RawExample]:
    for category, subs in json.loads(path.read_text(encoding="utf-8")).items():
        for questions in subs.values():
            for q in questions:
                ex = _mapped("catqa", category, q, "en", default_category="discrimination_hate")
                if ex:
                    yield ex


def read_dangerousqa(path: Path) -> Iterator[RawExample]:
    for q in json.loads(path.read_text(encoding="utf-8")):
        ex = _mapped("dangerousqa", "*", q, "en")
        if ex:
            yield ex


def read_ailuminate(path: Path) -> Iterator[RawExample]:
    with open(path, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            ex = _mapped("ailuminate", row["hazard"], row["prompt_text"], "en")
            if ex:
                yield ex


def _jsonl_rows(path: Path) -> Iterator[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def read_coconot(path: Path) -> Iterator[RawExample]:
    for row in _jsonl_rows(path):
        key = row["subcategory"] if row["category"] == "Requests with safety concerns" else (
            row["category"]
        )
        ex = _mapped("coconot", key, row["prompt"], "en")
        if ex:
            yield ex


def _reader_safe(source: str, field: str):
    def read(path: Path) -> Iterator[RawExample]:
        if path.suffix == ".json":
            rows = json.loads(path.read_text(encoding="utf-8"))
        else:
            rows = _jsonl_rows(path)
        for row in rows:
            ex = _mapped(source, "*", row.get(field) or "", "en")
            if ex:
                yield ex

    read.__name__ = f"read_{source}"
    return read


def read_toxigen(path: Path) -> Iterator[RawExample]:
    """Each line lists 5-6 statements ("- ...\\n- ..."); every distinct statement is a row."""
    import tarfile

    seen: set[str] = set()
    with tarfile.open(path, "r:gz") as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            name = Path(member.name).name
            if not member.isfile() or not name.endswith(".txt") or name == "LICENSE.txt":
                continue
            kind = "hate" if name.startswith("hate_") else "neutral"
            data = tar.extractfile(member).read().decode("utf-8")
            for line in data.splitlines():
                for part in line.split("\\n"):
                    text = part.strip().lstrip("-").strip()
                    if len(text) < 8 or text in seen:
                        continue
                    seen.add(text)
                    ex = _mapped("toxigen", kind, text, "en")
                    if ex:
                        yield ex


# --- Korean sources added for guardian v2 --------------------------------------------------


def read_multijail(path: Path) -> Iterator[RawExample]:
    """Both the English original and the Korean translation; the first known tag decides."""
    import ast

    with open(path, encoding="utf-8-sig", newline="") as f:
        for row in csv.DictReader(f):
            try:
                tags = set(ast.literal_eval(row["tags"]))
            except (ValueError, SyntaxError):
                tags = set()
            category = next((c for t, c in MULTIJAIL_TAGS if t in tags), None)
            for lang, source in (("ko", "multijail"), ("en", "multijail_en")):
                ex = _mapped("multijail", "*", row.get(lang, ""), lang, category=category)
                if ex:
                    ex.source = source
                    yield ex


#: ChatbotData utterances that express suicidal thoughts (reviewed by reading every match).
SUICIDAL = re.compile(r"죽고 ?싶|자살|죽을래|죽어버리|뛰어내리|살기 싫|사라지고 싶|목숨")


def read_chatbotdata(path: Path) -> Iterator[RawExample]:
    with open(path, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            q = row.get("Q", "")
            ex = _mapped("chatbotdata", "suicidal" if SUICIDAL.search(q) else "safe", q, "ko")
            if ex:
                yield ex


def read_square_demo(path: Path) -> Iterator[RawExample]:
    """Seed questions, each with its human-written acceptable response from the sibling file."""
    responses: dict[str, str] = {}
    sibling = path.with_name("square_response_demo_iter0.json")
    if sibling.is_file():
        for r in json.loads(sibling.read_text(encoding="utf-8")):
            if r.get("acceptable?") == 1:
                responses.setdefault(r["question"], r["response"])
    for row in json.loads(path.read_text(encoding="utf-8")):
        q = row.get("question", "")
        ex = _mapped(
            "square_demo", str(row.get("category")), q, "ko", response=responses.get(q)
        )
        if ex:
            yield ex


#: (relative path, reader). hh_rlhf is deliberately absent: it has no per-request labels.
SOURCE_FILES: tuple[tuple[str, object], ...] = (
    ("en/openai_moderation_samples-1680.jsonl.gz", read_openai_moderation),
    ("en/self_instruct_seed_tasks.jsonl", read_self_instruct),
    ("ko/square_question_valid.json", read_square),
    ("ko/square_question_test_ood.json", read_square),
    ("ko/kosbi_valid.json", read_kosbi),
    ("ko/kocohub_hate_train.tsv", read_kocohub),
    ("ko/kocohub_hate_dev.tsv", read_kocohub),
    ("ko/kmhas_valid.txt", read_kmhas),
    ("ko/apeach_test.csv", read_apeach),
    ("ko/korquad_v1.0_dev.json", read_korquad),
    ("ko/k-dna_sample.json", read_kdna),
    ("en/advbench_harmful_behaviors.csv", read_advbench),
    ("en/harmfulqa.json", read_harmfulqa),
    ("en/catqa_english.json", read_catqa),
    ("en/dangerousqa.json", read_dangerousqa),
    ("en/ailuminate_v1.0_demo_en_us_prompt_set.csv", read_ailuminate),
    ("en/coconot_eval.jsonl", read_coconot),
    ("en/coconot_contrast_eval.jsonl", _reader_safe("coconot_contrast", "prompt")),
    ("en/coconot_pref.jsonl.gz", _reader_safe("coconot_pref", "prompt")),
    ("en/toxigen_prompts.tar.gz", read_toxigen),
    ("en/nq_open_dev.jsonl", _reader_safe("nq_open", "question")),
    ("en/nq_open_efficientqa_dev.jsonl", _reader_safe("nq_open", "question")),
    ("en/nq_open_efficientqa_test_no-annotations.jsonl", _reader_safe("nq_open", "question")),
    ("en/webquestions_trainmodel.json", _reader_safe("webquestions", "qText")),
    ("en/webquestions_val.json", _reader_safe("webquestions", "qText")),
    ("en/arena_hard_v0.1_question.jsonl", _reader_safe("arena_hard", "prompt")),
    ("en/arena_hard_v2.0_question.jsonl", _reader_safe("arena_hard", "prompt")),
    ("ko/multijail.csv", read_multijail),
    ("ko/chatbotdata.csv", read_chatbotdata),
    ("ko/square_question_demo_iter0.json", read_square_demo),
    ("ko/kosbi_sentence_demo_iter0.json", lambda path: read_kosbi(path, "kosbi_demo")),
)
#: Public files read elsewhere (square_response_demo: the responses of square_demo).
COMPANION_FILES = {"ko/square_response_demo_iter0.json": "responses of square_demo questions"}
EXCLUDED_FILES = {
    "en/hh_rlhf_harmless-base_test.jsonl.gz": "unlabelled red-teaming dialogues",
}


def read_public(data_dir: str | Path) -> tuple[list[RawExample], list[str]]:
    """All mapped public examples, and the files that were missing."""
    root = Path(data_dir)
    out: list[RawExample] = []
    missing: list[str] = []
    for rel, reader in SOURCE_FILES:
        path = root / rel
        if not path.is_file():
            missing.append(rel)
            continue
        out.extend(reader(path))
    return out, missing
