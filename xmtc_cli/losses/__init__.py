"""Training losses: the pure assignment and transport algorithms, and the loss modules on top."""

from xmtc_cli.losses.criterion import (
    CrossEntropyLoss,
    LossTerms,
    MatchingLoss,
    build_criterion,
    teacher_targets,
)
from xmtc_cli.losses.matching import UNMATCHED, assign
from xmtc_cli.losses.transport import cosine_cost, ipot

__all__ = [
    "UNMATCHED",
    "CrossEntropyLoss",
    "LossTerms",
    "MatchingLoss",
    "assign",
    "build_criterion",
    "cosine_cost",
    "ipot",
    "teacher_targets",
]
