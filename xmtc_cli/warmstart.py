"""`xmtc train RECIPE --init CHECKPOINT`: start from a checkpoint's weights on other data.

The new data was preprocessed on its own, so its token and label ids differ from the
checkpoint's: rows are matched by name. The token embedding's rows of words both know are
copied (words new to the checkpoint keep their fresh start: GloVe or random); the label
embedding's and the output layer's rows of the specials and of every training label of the new
data are copied from the checkpoint's rows of the same label. Every other tensor must have the
checkpoint's shape (the same model settings) and is copied whole.

The label space must be the checkpoint's: every training label of the new data must be one of
its labels (else a DataError naming one that is not). Labels of the checkpoint that the new
data lacks are left out of the new model, which cannot predict them (a warning says so).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

from xmtc_cli.checkpoint import load_checkpoint
from xmtc_cli.errors import DataError, short
from xmtc_cli.labelspace import NUM_SPECIALS

log = logging.getLogger(__name__)

TOKEN_TABLE = "encoder.embedding.weight"
LABEL_TABLE = "label_embedding.weight"


def _label_tables(keys: list[str]) -> set[str]:
    """The label embedding and the output layer's last linear map (weight and bias)."""
    numbered = [int(m.group(1)) for k in keys if (m := re.fullmatch(r"output\.(\d+)\.\w+", k))]
    last = f"output.{max(numbered)}." if numbered else "output."
    return {LABEL_TABLE} | {k for k in keys if k.startswith(last) and k.count(".") ==
                            last.count(".")}


@torch.no_grad()
def init_from_checkpoint(model: torch.nn.Module, path: str | Path, tokens: list[str],
                         labels: list[str]) -> dict[str, int]:
    """Copy `path`'s weights into `model`, built for data with vocabulary `tokens` and
    training labels `labels` (the module's rules). Returns counts of what was matched."""
    state, meta = load_checkpoint(path)
    index = {label: i for i, label in enumerate(meta.labels)}
    unknown = [label for label in labels if label not in index]
    if unknown:
        raise DataError(
            f"{len(unknown):,} training label{'s' if len(unknown) > 1 else ''} of the data "
            f"{'are' if len(unknown) > 1 else 'is'} not a label of {path}, e.g. "
            f"{short(unknown[0])}: --init needs the checkpoint's label space",
            "train a new model on this data (without --init), or keep to the labels the "
            "checkpoint knows",
        )
    left_out = len(meta.labels) - len(labels)
    if left_out:
        log.warning("%s has %d labels the data does not: the new model cannot predict them",
                    path, left_out)
    token_index = {token: i for i, token in enumerate(meta.tokens)}
    own = model.state_dict()
    label_keys = _label_tables(list(own))
    rows = torch.tensor(list(range(NUM_SPECIALS)) + [NUM_SPECIALS + index[x] for x in labels])
    shared = [(i, token_index[t]) for i, t in enumerate(tokens) if t in token_index]
    for key, new in own.items():
        old = state.get(key)
        if old is None:
            raise DataError(f"{path} has no tensor {key!r}: it was trained with other model "
                            "settings", "give --init a checkpoint of the same recipe's model")
        old = old.to(new.device, new.dtype)
        if key in (TOKEN_TABLE, LABEL_TABLE) and old.shape[1:] != new.shape[1:]:
            raise DataError(f"{path} embeds {'words' if key == TOKEN_TABLE else 'labels'} in "
                            f"{old.shape[1]} dimensions, the data in {new.shape[1]}",
                            "preprocess the new data with the --glove file (and options) of "
                            "the checkpoint's data")
        if key == TOKEN_TABLE and old.shape[1:] == new.shape[1:]:
            if shared:
                mine, theirs = (torch.tensor(x) for x in zip(*shared))
                new[mine] = old[theirs]
        elif key in label_keys and old.shape[1:] == new.shape[1:] \
                and old.shape[0] == NUM_SPECIALS + len(meta.labels):
            new.copy_(old[rows.to(old.device)])
        elif old.shape == new.shape:
            new.copy_(old)
        else:
            raise DataError(f"{path}'s {key} has shape {tuple(old.shape)}, this recipe's model "
                            f"{tuple(new.shape)}: the model settings differ",
                            "give --init a checkpoint trained with the same model settings")
    return {"tokens": len(shared), "labels": len(labels)}
