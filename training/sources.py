"""Readers for the public files in data_dir: each yields raw examples mapped through mapping.py.

A reader that cannot find its file yields nothing and reports it (the build's stats list
missing sources), so a partial data folder still builds.
"""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from model.language import detect_language
from training.mapping import KMHAS_PRIORITY, OPENAI_FLAG_PRIORITY, lookup


@dataclass
class RawExample:
    text: str
    label: str  # safe / unsafe
    category: str | None
    source: str
    language: str
    ambiguous: bool = False
    response: str | None = None


def _mapped(source: str, source_label: str, text: str, language: str | None = None):
    text = (text or "").strip()
    if not text:
        return None
    m = lookup(source, source_label)
    if m.target is None:
        return None
    label = "safe" if m.target == "safe" else "unsafe"
    category = None if label == "safe" else m.target
    return RawExample(
        text=text,
        label=label,
        category=category,
        source=source,
        language=language or detect_language(text),
        ambiguous=m.ambiguous,
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


def read_kosbi(path: Path) -> Iterator[RawExample]:
    for row in json.loads(path.read_text(encoding="utf-8")):
        ex = _mapped("kosbi", row["sentence_label"], row.get("sentence", ""), "ko")
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
)
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
