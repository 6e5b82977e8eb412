"""The guardian's prompt and answer format: special tokens, prompt ids, target ids, parsing.

Every backend (transformers, vLLM) and the trainer build sequences through this module, so
a model trained here is read back exactly the way it was taught.

Prompt:  [bos] <|query|> USER TEXT [<|harm|>] <|lang_xx|> <|verdict|>
Answer:  <|safe|> [eos]
     or  <|unsafe|> <|category|> SAFETY RESPONSE [eos]

Prompts are built from token ids, never by formatting a string and tokenizing it: user text
is tokenized on its own with special-token splitting, so a query that contains the literal
text "<|safe|>", "<|harm|>", "<bos>" or "<start_of_turn>" stays plain text and cannot open,
close or answer the prompt. The structural markers are special tokens that no user text can
produce.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from model.language import SUPPORTED_LANGUAGES
from model.taxonomy import CATEGORIES

QUERY_TOKEN = "<|query|>"
VERDICT_TOKEN = "<|verdict|>"
SAFE_TOKEN = "<|safe|>"
UNSAFE_TOKEN = "<|unsafe|>"
HARM_TOKEN = "<|harm|>"
LANGUAGE_TOKENS: dict[str, str] = {lang: f"<|lang_{lang}|>" for lang in SUPPORTED_LANGUAGES}
CATEGORY_TOKENS: dict[str, str] = {c.id: c.token for c in CATEGORIES}

#: Every guardian special token, in the order reserved slots are assigned. Append only:
#: reordering would silently remap the tokens of models trained before the change.
SPECIAL_TOKENS: tuple[str, ...] = (
    QUERY_TOKEN,
    VERDICT_TOKEN,
    SAFE_TOKEN,
    UNSAFE_TOKEN,
    HARM_TOKEN,
    *LANGUAGE_TOKENS.values(),
    *CATEGORY_TOKENS.values(),
)

#: File in a model or adapter directory that records which id each special token has.
TOKEN_MAP_FILE = "guardian_tokens.json"


@dataclass(frozen=True)
class GuardianTokens:
    """Ids of the special tokens in one tokenizer."""

    ids: Mapping[str, int]

    def __post_init__(self) -> None:
        missing = [t for t in SPECIAL_TOKENS if t not in self.ids]
        if missing:
            raise ValueError(f"token map lacks guardian tokens: {missing}")
        if len(set(self.ids[t] for t in SPECIAL_TOKENS)) != len(SPECIAL_TOKENS):
            raise ValueError("guardian special tokens must have distinct ids")

    @property
    def query(self) -> int:
        return self.ids[QUERY_TOKEN]

    @property
    def verdict(self) -> int:
        return self.ids[VERDICT_TOKEN]

    @property
    def safe(self) -> int:
        return self.ids[SAFE_TOKEN]

    @property
    def unsafe(self) -> int:
        return self.ids[UNSAFE_TOKEN]

    @property
    def harm(self) -> int:
        return self.ids[HARM_TOKEN]

    def language(self, lang: str) -> int:
        return self.ids[LANGUAGE_TOKENS.get(lang, LANGUAGE_TOKENS["en"])]

    def category(self, category_id: str) -> int:
        return self.ids[CATEGORY_TOKENS[category_id]]

    @property
    def category_ids(self) -> list[int]:
        return [self.ids[CATEGORY_TOKENS[c.id]] for c in CATEGORIES]

    def category_of(self, token_id: int) -> str | None:
        for cid, tok in CATEGORY_TOKENS.items():
            if self.ids[tok] == token_id:
                return cid
        return None

    @property
    def all_ids(self) -> frozenset[int]:
        return frozenset(self.ids[t] for t in SPECIAL_TOKENS)


_SPECIALS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _special_ids(tokenizer) -> frozenset[int]:
    """Computed once per tokenizer: Gemma has 6k control pieces, and building
    `added_tokens_decoder` each call made tokenizing a training set take minutes."""
    try:
        return _SPECIALS[tokenizer]
    except (KeyError, TypeError):
        pass
    specials = set(getattr(tokenizer, "all_special_ids", []) or [])
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    specials.update(int(i) for i, t in added.items() if getattr(t, "special", False))
    found = frozenset(specials)
    try:
        _SPECIALS[tokenizer] = found
    except TypeError:
        pass
    return found


def _protected_ids(tokenizer, tokens: GuardianTokens) -> frozenset[int]:
    return _special_ids(tokenizer) | tokens.all_ids


def encode_user_text(tokenizer, tokens: GuardianTokens, text: str) -> list[int]:
    """Tokenize user text so that it can only ever yield ordinary tokens.

    `split_special_tokens=True` makes the tokenizer treat "<bos>" or "<|harm|>" in the text
    as characters. Reserved slots that the guardian tokens occupy (e.g. Gemma's
    "<unused3>") are special tokens too, so they are split the same way. The check after it
    is a second line: should a tokenizer ignore the flag, any protected id is re-encoded
    from its characters one by one.
    """
    ids = tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    protected = _protected_ids(tokenizer, tokens)
    if not protected.intersection(ids):
        return list(ids)
    safe: list[int] = []
    for i in ids:
        if i in protected:
            piece = tokenizer.convert_ids_to_tokens(i)
            for ch in piece:
                sub = tokenizer(ch, add_special_tokens=False, split_special_tokens=True)
                safe.extend(j for j in sub["input_ids"] if j not in protected)
        else:
            safe.append(i)
    return safe


@dataclass(frozen=True)
class EncodedPrompt:
    ids: list[int]
    truncated: bool


def build_prompt_ids(
    tokenizer,
    tokens: GuardianTokens,
    text: str,
    *,
    language: str,
    force_harm: bool = False,
    max_query_tokens: int = 256,
) -> EncodedPrompt:
    """Token ids of the prompt; the model's next token is the label."""
    user = encode_user_text(tokenizer, tokens, text)
    truncated = len(user) > max_query_tokens
    if truncated:
        user = user[:max_query_tokens]
    ids: list[int] = []
    if tokenizer.bos_token_id is not None:
        ids.append(tokenizer.bos_token_id)
    ids.append(tokens.query)
    ids.extend(user)
    if force_harm:
        ids.append(tokens.harm)
    ids.append(tokens.language(language))
    ids.append(tokens.verdict)
    return EncodedPrompt(ids=ids, truncated=truncated)


def build_answer_ids(
    tokenizer,
    tokens: GuardianTokens,
    *,
    label: str,
    category: str | None = None,
    response: str | None = None,
    max_response_tokens: int = 192,
) -> list[int]:
    """Token ids of the answer the model is trained to produce (loss goes on these only)."""
    eos = tokenizer.eos_token_id
    if label == "safe":
        ids = [tokens.safe]
    elif label == "unsafe":
        if category is None:
            raise ValueError("an unsafe answer needs a category")
        ids = [tokens.unsafe, tokens.category(category)]
        if response:
            ids.extend(encode_user_text(tokenizer, tokens, response)[:max_response_tokens])
    else:
        raise ValueError(f"label must be 'safe' or 'unsafe', not {label!r}")
    if eos is not None:
        ids.append(eos)
    return ids


@dataclass
class ParsedAnswer:
    """What a generated continuation says. `error` is set (never raised) when malformed."""

    label: str | None
    category: str | None = None
    response: str | None = None
    error: str | None = None
    extra: dict = field(default_factory=dict)


def parse_continuation(
    tokenizer, tokens: GuardianTokens, ids: Sequence[int], *, label_given: str | None = None
) -> ParsedAnswer:
    """Read generated ids back into label, category and response. Never raises.

    `label_given` is set when the label token was chosen from logits and fed to the model,
    so `ids` start at the category position.
    """
    try:
        seq = [int(i) for i in ids]
        eos = tokenizer.eos_token_id
        pad = tokenizer.pad_token_id
        if label_given is None:
            if not seq:
                return ParsedAnswer(label=None, error="empty output")
            first, seq = seq[0], seq[1:]
            if first == tokens.safe:
                return ParsedAnswer(label="safe")
            if first != tokens.unsafe:
                return ParsedAnswer(
                    label=None, error=f"output does not start with a label token (id {first})"
                )
            label = "unsafe"
        else:
            label = label_given
        if label == "safe":
            return ParsedAnswer(label="safe")
        if not seq:
            return ParsedAnswer(label=label, error="unsafe answer has no category token")
        category = tokens.category_of(seq[0])
        if category is None:
            return ParsedAnswer(
                label=label, error=f"unsafe answer has no category token (id {seq[0]})"
            )
        body = []
        for i in seq[1:]:
            if i == eos or i == pad:
                break
            body.append(i)
        stray = [i for i in body if i in tokens.all_ids]
        body = [i for i in body if i not in tokens.all_ids]
        response = tokenizer.decode(body, skip_special_tokens=True).strip()
        error = None
        if not response:
            error = "unsafe answer has an empty safety response"
        elif stray:
            error = "special tokens inside the safety response were dropped"
        return ParsedAnswer(label=label, category=category, response=response or None, error=error)
    except Exception as exc:  # a parser that throws would drop a verdict on the floor
        return ParsedAnswer(label=label_given, error=f"unparseable output: {exc!r}")
