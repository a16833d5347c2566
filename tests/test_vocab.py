"""Vocabularies: special tokens, ranking by count with first-seen ties, the size cap."""

import numpy as np

from xmtc_cli.data.vocab import FirstSeen, label_vocabulary, word_vocabulary


def count(seen: FirstSeen, docs: list[list[str]]) -> np.ndarray:
    ids = [i for doc in docs for i in seen.add(doc)]
    return np.bincount(ids, minlength=len(seen.index)).astype(np.int64)


def test_first_seen_numbers_in_order_of_appearance():
    seen = FirstSeen()
    assert seen.add(["b", "a", "b"]) == [0, 1, 0]
    assert seen.add(["c", "a"]) == [2, 1]
    assert seen.items == ["b", "a", "c"]


def test_words_rank_by_count_with_ties_in_first_seen_order_after_the_specials():
    seen = FirstSeen()
    counts = count(seen, [["x", "y", "z", "y"], ["z", "w"]])
    vocab, remap = word_vocabulary(seen, counts, max_words=10)
    assert vocab.items == ["<pad>", "<unk>", "y", "z", "x", "w"]
    assert vocab.counts.tolist() == [0, 0, 2, 2, 1, 1]
    assert remap[[0, 1, 2, 3]].tolist() == [4, 2, 3, 5]  # x y z w
    assert vocab.index["z"] == 3


def test_the_cap_sends_rare_words_to_unk_and_counts_them():
    seen = FirstSeen()
    counts = count(seen, [["a", "b", "b", "c", "c", "c", "d"]])
    vocab, remap = word_vocabulary(seen, counts, max_words=2)
    assert vocab.items == ["<pad>", "<unk>", "c", "b"]
    assert vocab.counts.tolist() == [0, 2, 3, 2]
    assert remap.tolist() == [1, 3, 2, 1]  # a -> <unk>, b, c, d -> <unk>


def test_special_token_spellings_in_text_are_unknown_words():
    seen = FirstSeen()
    counts = count(seen, [["<pad>", "<pad>", "<unk>", "word"]])
    vocab, remap = word_vocabulary(seen, counts, max_words=10)
    assert vocab.items == ["<pad>", "<unk>", "word"]
    assert remap.tolist() == [1, 1, 2]
    assert vocab.counts.tolist() == [0, 3, 1]


def test_labels_rank_by_document_count_ties_by_first_appearance():
    seen = FirstSeen()
    counts = count(seen, [["c", "a"], ["b"], ["a"], ["b", "d"]])
    vocab, remap = label_vocabulary(seen, counts)
    assert vocab.items == ["a", "b", "c", "d"]
    assert vocab.counts.tolist() == [2, 2, 1, 1]
    assert remap.tolist() == [2, 0, 1, 3]  # first-seen c a b d
