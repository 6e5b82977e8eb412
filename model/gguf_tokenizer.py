"""Gemma's tokenizer rebuilt from the GGUF vocabulary, as the SentencePiece BPE it is.

A GGUF file stores a SentencePiece tokenizer as pieces, scores and piece types, without
merges. transformers 5 turns that into a BPE with no merges at all, which splits every
word into single characters ("The" -> "T", "h", "e"): the base then reads text it never saw
in pre-training and predicts garbage. SentencePiece's BPE merges the adjacent pair whose
merged piece has the highest score; a Hugging Face BPE whose merges are ranked by that score
does the same, so the merges are recovered from the pieces: every split of a normal piece
into two pieces of the vocabulary, ordered by the merged piece's score.

Control pieces (`<bos>`, `<unusedN>`, `<start_of_turn>`) become special added tokens and
never result from a merge, so user text cannot produce them; user-defined pieces (newline
runs) match whole, as in SentencePiece.
"""

from __future__ import annotations

from pathlib import Path

NORMAL, CONTROL, USER_DEFINED, BYTE = 1, 3, 4, 6


def read_gguf_vocab(gguf_path: str | Path) -> tuple[list[str], list[float], list[int]]:
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf_path))

    def array(name):
        field = reader.fields[name]
        return [field.parts[i] for i in field.data]

    pieces = [bytes(p).decode("utf-8") for p in array("tokenizer.ggml.tokens")]
    scores = [float(p[0]) for p in array("tokenizer.ggml.scores")]
    types = [int(p[0]) for p in array("tokenizer.ggml.token_type")]
    return pieces, scores, types


def bpe_merges(pieces: list[str], scores: list[float], types: list[int]) -> list[tuple[str, str]]:
    """Pairs whose concatenation is a normal piece, highest-scoring merged piece first."""
    vocab = {p: i for i, p in enumerate(pieces) if types[i] in (NORMAL, USER_DEFINED)}
    ranked = []
    for i, piece in enumerate(pieces):
        if types[i] != NORMAL or len(piece) < 2:
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                ranked.append((-scores[i], i, vocab[left], vocab[right], left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def tokenizer_from_gguf(gguf_path: str | Path):
    """A PreTrainedTokenizerFast equivalent to the GGUF's SentencePiece tokenizer."""
    return tokenizer_from_pieces(*read_gguf_vocab(gguf_path))


def tokenizer_from_pieces(pieces: list[str], scores: list[float], types: list[int]):
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    vocab = {p: i for i, p in enumerate(pieces)}
    tok = Tokenizer(
        BPE(
            vocab=vocab, merges=bpe_merges(pieces, scores, types), unk_token="<unk>",
            fuse_unk=True, byte_fallback=True,
        )
    )
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    tok.add_special_tokens(
        [AddedToken(p, special=True, normalized=False) for p, t in zip(pieces, types)
         if t == CONTROL]
    )
    tok.add_tokens(
        [AddedToken(p, special=False, normalized=False) for p, t in zip(pieces, types)
         if t == USER_DEFINED]
    )
    bos = "<bos>"
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab[bos])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token="<eos>", unk_token="<unk>",
        pad_token="<pad>", mask_token="<mask>", padding_side="left",
    )
