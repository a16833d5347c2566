"""The tokenizers, rebuilt from the settings stored with processed data and checkpoints."""

import pytest

from xmtc_cli.data.tokenize import tokenizer_from_settings
from xmtc_cli.errors import DataError

TEXT = "BAHIA Cocoa (Reuters) - U.S. output rose 5.93 mln, don't long-term.\tEnd\x0cpage"


def test_whitespace_splits_like_the_papers_code():
    tokenize = tokenizer_from_settings({"kind": "whitespace", "lowercase": False})
    assert tokenize(TEXT) == TEXT.split()
    assert tokenize("") == [] and tokenize("  \t ") == []


def test_whitespace_lowercase():
    tokenize = tokenizer_from_settings({"kind": "whitespace", "lowercase": True})
    assert tokenize("BAHIA Cocoa (Reuters)") == ["bahia", "cocoa", "(reuters)"]


def test_punct_splits_punctuation_but_keeps_numbers_and_inner_marks():
    tokenize = tokenizer_from_settings({"kind": "punct", "lowercase": False})
    assert tokenize(TEXT) == [
        "BAHIA", "Cocoa", "(", "Reuters", ")", "-", "U.S", ".", "output", "rose", "5.93", "mln",
        ",", "don't", "long-term", ".", "End", "page",
    ]


def test_punct_lowercase_and_unicode_words():
    tokenize = tokenizer_from_settings({"kind": "punct", "lowercase": True})
    assert tokenize("Café «Zürich»!") == ["café", "«", "zürich", "»", "!"]


def test_lowercase_defaults_to_false():
    assert tokenizer_from_settings({"kind": "whitespace"})("A b") == ["A", "b"]


def test_no_token_holds_whitespace_so_vocabulary_files_stay_one_token_a_line():
    text = "a\u00a0b c\u2028d e\x85f g\rh"
    for kind in ("whitespace", "punct"):
        for token in tokenizer_from_settings({"kind": kind, "lowercase": False})(text):
            assert not any(ch.isspace() for ch in token)


def test_unknown_kind_is_a_clear_error():
    with pytest.raises(DataError, match="unknown tokenizer kind 'bpe'") as info:
        tokenizer_from_settings({"kind": "bpe", "lowercase": False})
    assert "whitespace" in info.value.hint and "punct" in info.value.hint


def test_rebuilding_is_cheap_and_returns_the_same_function():
    settings = {"kind": "whitespace", "lowercase": False}
    assert tokenizer_from_settings(settings) is tokenizer_from_settings(dict(settings))
