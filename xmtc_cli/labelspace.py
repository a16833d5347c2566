"""The model's output index space: three special symbols, then the corpus labels.

Processed data numbers labels 0..L-1 (see `xmtc_cli.data.processed`); the decoder predicts over
V = L + NUM_SPECIALS symbols, where label k is output index k + NUM_SPECIALS.
"""

from __future__ import annotations

EMPTY = 0  # ∅: a decoding step with no label (the set models' padding target)
BOS = 1  # start symbol fed to the first decoding step
EOS = 2  # end of sequence (Seq2Seq baselines only)
NUM_SPECIALS = 3
GOLD_PAD = -1  # fills gold sets [B, M] after each document's labels, and ignored CE targets
