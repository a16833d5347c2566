"""Turn a line of text into words, the same way at preprocessing and at prediction time.

The paper's code splits on whitespace and keeps the case (`line.split()`); that is the default
here. Raw text with punctuation attached to words ("January.", "(Reuters)") reads better with
the `punct` tokenizer, which splits punctuation off but keeps numbers ("5.93"), abbreviations
("U.S") and hyphenated or elided words ("long-term", "don't") whole. Lower-casing is optional
for both. The choice is stored with the processed data and the checkpoint as
`{"kind": ..., "lowercase": ...}` and rebuilt from there by `tokenizer_from_settings`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Literal, get_args

from xmtc_cli.errors import DataError

TokenizerKind = Literal["whitespace", "punct"]
TOKENIZER_KINDS: tuple[str, ...] = get_args(TokenizerKind)

# A word is a run of word characters, possibly joined by single inner `-`, `'`, or `.`;
# any other non-space character stands alone.
_PUNCT_WORDS = re.compile(r"\w+(?:[-'.]\w+)*|[^\w\s]")


def tokenizer_from_settings(settings: dict[str, Any]) -> Callable[[str], list[str]]:
    """Rebuild the tokenizer recorded as `{"kind": "whitespace"|"punct", "lowercase": bool}`."""
    kind = settings.get("kind")
    lowercase = bool(settings.get("lowercase", False))
    if kind == "whitespace":
        return _lower_split if lowercase else str.split
    if kind == "punct":
        return _lower_punct if lowercase else _PUNCT_WORDS.findall
    raise DataError(
        f"unknown tokenizer kind {kind!r}",
        f"use one of: {', '.join(TOKENIZER_KINDS)}",
    )


def _lower_split(text: str) -> list[str]:
    return text.lower().split()


def _lower_punct(text: str) -> list[str]:
    return _PUNCT_WORDS.findall(text.lower())
