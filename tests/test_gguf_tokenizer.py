"""The SentencePiece-BPE rebuild on a vocabulary small enough to reason about."""

from model.gguf_tokenizer import BYTE, CONTROL, NORMAL, bpe_merges, tokenizer_from_pieces

PIECES = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<unused0>",
          "a", "b", "c", "\u2581", "ab", "abc", "\u2581a", "bc", "<0x41>"]
SCORES = [0, 0, 0, 0, 0, -1000, -100, -101, -102, -103, -1, -2, -3, -50, 0]
TYPES = [CONTROL] * 6 + [NORMAL] * 8 + [BYTE]


def test_merges_follow_the_merged_piece_score():
    merges = bpe_merges(PIECES, SCORES, TYPES)
    assert merges[0] == ("a", "b")  # "ab" scores highest
    assert ("ab", "c") in merges and ("a", "bc") in merges
    assert merges.index(("ab", "c")) < merges.index(("\u2581", "a"))
    assert merges.index(("a", "bc")) < merges.index(("b", "c"))  # "abc" before "bc"


def test_words_stay_whole_and_control_pieces_never_come_from_text():
    tok = tokenizer_from_pieces(PIECES, SCORES, TYPES)
    assert tok.tokenize("abc") == ["abc"]
    # "ab" is the best-scoring pair, then "abc": SentencePiece merges greedily the same way
    assert tok.tokenize(" abc") == ["\u2581", "abc"]
    ids = tok("<unused0>abc", add_special_tokens=False, split_special_tokens=True).input_ids
    assert 5 not in ids
    assert tok("abc").input_ids[0] == 2  # <bos> first
    assert tok.decode(tok(" abc", add_special_tokens=False).input_ids) == " abc"
