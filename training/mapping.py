"""The one reviewed mapping from every source's label scheme onto the guardian taxonomy.

Each row: (source, source label) -> "safe", a category id, or None (excluded), with the
reason and whether the mapping is ambiguous. `data build` reads only this table; the stats
file and the model card print it, so anyone can see how a public label became ours.
Reviewed by the training engineers; ambiguous rows are marked and counted in the stats.
"""

from __future__ import annotations

from dataclasses import dataclass

from model.taxonomy import CATEGORY_IDS


@dataclass(frozen=True)
class LabelMap:
    source: str
    source_label: str
    target: str | None  # "safe", a category id, or None = excluded
    reason: str
    ambiguous: bool = False


MAPPING: tuple[LabelMap, ...] = (
    # --- English ---------------------------------------------------------------------
    LabelMap("openai_moderation", "none", "safe", "no moderation flag set"),
    LabelMap("openai_moderation", "S3", "sexual_minors", "sexual content involving minors"),
    LabelMap("openai_moderation", "SH", "self_harm_suicide", "self-harm flag"),
    LabelMap("openai_moderation", "H2", "discrimination_hate", "threatening hate"),
    LabelMap("openai_moderation", "H", "discrimination_hate", "hate against a protected group"),
    LabelMap("openai_moderation", "HR", "insult_offensiveness", "harassment of a person"),
    LabelMap(
        "openai_moderation",
        "S",
        "sexual_minors",
        "adult sexual content; our 'sexual / harmful to minors' category is the only sexual one",
        ambiguous=True,
    ),
    LabelMap(
        "openai_moderation",
        "V2",
        "crime_advice",
        "graphic violence; no violence category in the taxonomy, nearest is crime",
        ambiguous=True,
    ),
    LabelMap(
        "openai_moderation",
        "V",
        "crime_advice",
        "violence; texts describe or threaten violence rather than ask advice",
        ambiguous=True,
    ),
    LabelMap(
        "hh_rlhf",
        "*",
        None,
        "red-teaming dialogues with no per-request label: excluded (unlabelled pool "
        "for teacher relabelling only)",
    ),
    LabelMap("self_instruct", "*", "safe", "benign instruction seed tasks"),
    # --- Korean ----------------------------------------------------------------------
    LabelMap("square", "0", "safe", "SQuARe sensitive?=0: not sensitive"),
    LabelMap("square", "contentious", "sensitive_topic", "contested social/political question"),
    LabelMap("square", "predictive", "uncertain_prediction", "asks to predict the future"),
    LabelMap(
        "square",
        "ethical",
        "sensitive_topic",
        "asks for a moral judgement; many are mild, nearest is sensitive topic",
        ambiguous=True,
    ),
    LabelMap("square", "etc", "sensitive_topic", "other sensitive questions", ambiguous=True),
    LabelMap("kosbi", "safe", "safe", "KoSBi sentence_label safe"),
    LabelMap(
        "kosbi",
        "unsafe",
        "discrimination_hate",
        "stereotype / prejudice / discrimination about a demographic group (statements, "
        "not queries)",
    ),
    LabelMap("kocohub", "none", "safe", "no hate, no offence"),
    LabelMap("kocohub", "hate", "discrimination_hate", "hate speech (gender/other bias)"),
    LabelMap("kocohub", "offensive", "insult_offensiveness", "offensive comment"),
    LabelMap("kmhas", "8", "safe", "K-MHaS 'not hate speech'"),
    LabelMap("kmhas", "3", "insult_offensiveness", "profanity only"),
    LabelMap("kmhas", "0", "discrimination_hate", "hate by origin"),
    LabelMap("kmhas", "1", "discrimination_hate", "hate by physical appearance", ambiguous=True),
    LabelMap("kmhas", "2", "discrimination_hate", "political hate", ambiguous=True),
    LabelMap("kmhas", "4", "discrimination_hate", "hate by age"),
    LabelMap("kmhas", "5", "discrimination_hate", "hate by gender"),
    LabelMap("kmhas", "6", "discrimination_hate", "hate by race"),
    LabelMap("kmhas", "7", "discrimination_hate", "hate by religion"),
    LabelMap("apeach", "Default", "safe", "APEACH not offensive"),
    LabelMap(
        "apeach",
        "Spoiled",
        "insult_offensiveness",
        "offensive text; some are hate against groups",
        ambiguous=True,
    ),
    LabelMap("korquad", "*", "safe", "factual reading-comprehension questions"),
    LabelMap("k-dna", "악용", "crime_advice", "misuse: asks for help with harmful acts"),
    LabelMap(
        "k-dna",
        "정보 위험",
        "privacy_violation",
        "information hazard: private or secret information (also corporate secrets)",
        ambiguous=True,
    ),
    LabelMap(
        "k-dna",
        "차별, 배제, 독성, 혐오, 공격",
        "discrimination_hate",
        "discrimination, exclusion, toxicity, hate",
    ),
    LabelMap(
        "k-dna",
        "인간-챗봇의 상호작용",
        "self_harm_suicide",
        "human-chatbot interaction; the sample's rows are distress / mental health",
        ambiguous=True,
    ),
    LabelMap(
        "k-dna",
        "잘못된 정보",
        "uncertain_prediction",
        "misinformation: asks for claims the model cannot know",
        ambiguous=True,
    ),
    # --- English, added for guardian v2 (issue 9) -----------------------------------
    LabelMap("advbench", "*", "<keyword>",
             "harmful instruction; category per item (categorize.py)", ambiguous=True),
    LabelMap("harmfulqa", "*", "<keyword>", "harmful academic-style question; category per item",
             ambiguous=True),
    LabelMap("dangerousqa", "*", "<keyword>", "short harmful question; category per item",
             ambiguous=True),
    LabelMap("catqa", "Illegal Activity", "crime_advice", "illegal activity"),
    LabelMap("catqa", "Malware Viruses", "crime_advice", "malware"),
    LabelMap("catqa", "Physical Harm", "crime_advice", "physical harm to others"),
    LabelMap("catqa", "Economic Harm", "crime_advice", "economic harm (fraud, gambling)"),
    LabelMap("catqa", "Fraud/Deception", "crime_advice", "fraud and deception"),
    LabelMap("catqa", "Child Abuse", "sexual_minors", "abuse of children"),
    LabelMap("catqa", "Adult Content", "sexual_minors", "adult sexual content", ambiguous=True),
    LabelMap("catqa", "Hate/Harass/Violence", "<keyword>",
             "hate, harassment or violence: per item, hate unless it matches another",
             ambiguous=True),
    LabelMap("catqa", "Political Campaigning", "sensitive_topic", "political campaigning"),
    LabelMap("catqa", "Privacy Violation Activity", "privacy_violation", "privacy violation"),
    LabelMap("catqa", "Tailored Financial Advice", "uncertain_prediction",
             "tailored financial advice: asks for confident money calls", ambiguous=True),
    LabelMap("ailuminate", "vcr", "crime_advice", "violent crimes"),
    LabelMap("ailuminate", "ncr", "crime_advice", "non-violent crimes"),
    LabelMap("ailuminate", "iwp", "crime_advice", "indiscriminate weapons"),
    LabelMap("ailuminate", "src", "sexual_minors", "sex-related crimes", ambiguous=True),
    LabelMap("ailuminate", "cse", "sexual_minors", "child sexual exploitation"),
    LabelMap("ailuminate", "sxc_prn", "sexual_minors", "sexual content (the only sexual category)",
             ambiguous=True),
    LabelMap("ailuminate", "ssh", "self_harm_suicide", "suicide and self-harm"),
    LabelMap("ailuminate", "ipv", "copyright_infringement", "intellectual property"),
    LabelMap("ailuminate", "dfm", "insult_offensiveness", "defamation of a person"),
    LabelMap("ailuminate", "hte", "discrimination_hate", "hate"),
    LabelMap("ailuminate", "prv", "privacy_violation", "privacy"),
    LabelMap("ailuminate", "spc_fin", "uncertain_prediction", "specialised financial advice",
             ambiguous=True),
    LabelMap("ailuminate", "spc_ele", "sensitive_topic", "elections"),
    LabelMap("ailuminate", "spc_hlt", None, "specialised health advice: answer with care, "
             "no guardian category"),
    LabelMap("ailuminate", "spc_lgl", None, "specialised legal advice: answer with care, "
             "no guardian category"),
    LabelMap("coconot", "privacy violations", "privacy_violation", "privacy violation request"),
    LabelMap("coconot", "copyright violations", "copyright_infringement", "copyright request"),
    LabelMap("coconot", "triggers for offensive language", "insult_offensiveness",
             "asks for offensive language"),
    LabelMap("coconot", "dangerous or sensitive topics", "<keyword>",
             "dangerous topic: per item, crime unless it matches another", ambiguous=True),
    LabelMap("coconot", "wildchats", "<keyword>", "real chat request flagged unsafe; per item",
             ambiguous=True),
    LabelMap("coconot", "incomprehensible", "safe", "garbled request: not a harm"),
    LabelMap("coconot", "misinformation", "sensitive_topic",
             "asks to write or endorse misinformation", ambiguous=True),
    LabelMap("coconot", "Humanizing requests", "safe",
             "asks about the assistant's feelings or opinions without malice: not a harm in "
             "this taxonomy", ambiguous=True),
    LabelMap("coconot", "Incomplete requests", "safe", "incomplete request: not a harm"),
    LabelMap("coconot", "Indeterminate requests", "safe", "indeterminate request: not a harm"),
    LabelMap("coconot", "Unsupported requests", "safe", "unsupported request: not a harm"),
    LabelMap("coconot_contrast", "*", "safe", "benign look-alike (contrast set)"),
    LabelMap("coconot_pref", "*", "safe", "benign look-alike (contrast preference set)"),
    LabelMap("toxigen", "hate", "discrimination_hate",
             "implicitly hateful statement about a group"),
    LabelMap("toxigen", "neutral", "safe", "neutral statement about a group"),
    LabelMap("nq_open", "*", "safe", "real anonymised search query"),
    LabelMap("webquestions", "*", "safe", "Google Suggest question"),
    LabelMap("arena_hard", "*", "safe", "real chat prompt, technical or creative (spot-checked)",
             ambiguous=True),
    # --- Korean, added for guardian v2 ----------------------------------------------
    LabelMap("multijail", "*", "<tags>",
             "red-team request; category from its tags (MULTIJAIL_TAGS)"),
    LabelMap("chatbotdata", "safe", "safe", "everyday chatbot utterance"),
    LabelMap("chatbotdata", "suicidal", "self_harm_suicide",
             "utterance expressing suicidal thoughts (keyword match, reviewed)"),
    LabelMap("square_demo", "contentious", "sensitive_topic", "contested question (seed set)"),
    LabelMap("square_demo", "predictive", "uncertain_prediction", "prediction question (seed set)"),
    LabelMap("square_demo", "ethical", "sensitive_topic", "moral-judgement question (seed set)",
             ambiguous=True),
    LabelMap("kosbi_demo", "safe", "safe", "KoSBi seed sentence, safe"),
    LabelMap("kosbi_demo", "unsafe", "discrimination_hate", "KoSBi seed sentence, unsafe"),
    # --- our own seeds (data/seeds/) -------------------------------------------------
    LabelMap("seed_harmful", "*", "<category>", "written per category in the teacher's role"),
    LabelMap("seed_lookalike", "*", "safe", "benign look-alikes written in the teacher's role"),
    LabelMap("seed_everyday", "*", "safe",
             "everyday benign requests written in the teacher's role"),
    LabelMap("synth_harmful", "*", "<category>", "teacher-generated per category (data synth)"),
    LabelMap("synth_lookalike", "*", "safe", "teacher-generated benign look-alikes (data synth)"),
)

# MultiJail tags in priority order: the first tag present picks the category.
MULTIJAIL_TAGS: tuple[tuple[str, str], ...] = (
    ("Child abuse", "sexual_minors"),
    ("Sexual exploitation & human trafficking", "sexual_minors"),
    ("Adult content", "sexual_minors"),
    ("Self-harm", "self_harm_suicide"),
    ("Soliciting personally identifiable information", "privacy_violation"),
    ("Discrimination & injustice", "discrimination_hate"),
    ("Hate speech & offensive language", "discrimination_hate"),
    ("Bullying & harassment", "insult_offensiveness"),
    ("Conspiracy theories & misinformation", "sensitive_topic"),
    ("Violence & incitement", "crime_advice"),
    ("Theft", "crime_advice"),
    ("Weapons", "crime_advice"),
    ("Fraud & deception", "crime_advice"),
    ("Property crime & vandalism", "crime_advice"),
    ("Terrorism & organized crime", "crime_advice"),
    ("Substance abuse & banned substances", "crime_advice"),
    ("Animal abuse", "crime_advice"),
    ("Non-violent unethical behavior (e.g. lying, cheating, etc.)", "crime_advice"),
)

# openai_moderation flags in priority order: the first set flag picks the category.
OPENAI_FLAG_PRIORITY = ("S3", "SH", "H2", "H", "HR", "S", "V2", "V")
# K-MHaS: a hate class beats plain profanity.
KMHAS_PRIORITY = ("0", "4", "5", "6", "7", "1", "2", "3")

_INDEX = {(m.source, m.source_label): m for m in MAPPING}


def lookup(source: str, source_label: str) -> LabelMap:
    m = _INDEX.get((source, source_label)) or _INDEX.get((source, "*"))
    if m is None:
        raise KeyError(f"no mapping for {source}:{source_label!r}; add a row to MAPPING")
    return m


def validate() -> None:
    for m in MAPPING:
        if m.target in (None, "safe", "<category>", "<keyword>", "<tags>"):
            continue
        if m.target not in CATEGORY_IDS:
            raise ValueError(f"mapping {m.source}:{m.source_label} -> unknown {m.target}")
    for tag, cat in MULTIJAIL_TAGS:
        if cat not in CATEGORY_IDS:
            raise ValueError(f"MultiJail tag {tag!r} -> unknown {cat}")


def mapping_markdown() -> str:
    lines = ["| source | label | guardian | ambiguous | reason |", "|---|---|---|---|---|"]
    for m in MAPPING:
        tgt = m.target if m.target is not None else "(excluded)"
        amb = "yes" if m.ambiguous else ""
        lines.append(f"| {m.source} | {m.source_label} | {tgt} | {amb} | {m.reason} |")
    return "\n".join(lines) + "\n"


validate()
