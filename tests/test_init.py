"""`xmtc train --init CHECKPOINT`: weights carried over by name onto data preprocessed on its
own (other token and label ids), the label space enforced, and --init with --resume refused."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import write_recipe

from xmtc_cli.checkpoint import load_checkpoint
from xmtc_cli.labelspace import NUM_SPECIALS

pytestmark = pytest.mark.usefixtures("single_thread")


def _subset_corpus(raw, folder, docs: int):
    """The tiny corpus's first `docs` training documents, as JSON lines: another vocabulary
    and another label order once preprocessed."""
    folder.mkdir()
    for split, n in (("train", docs), ("test", 20)):
        texts = (raw / f"{split}_texts.txt").read_text().splitlines()[:n]
        labels = (raw / f"{split}_labels.txt").read_text().splitlines()[:n]
        (folder / f"{split}.jsonl").write_text("".join(
            json.dumps({"text": t, "labels": ls.split()}) + "\n" for t, ls in zip(texts, labels)))
    return folder


def test_init_carries_rows_over_by_name(tiny_run, tiny_data, tmp_path, cli):
    corpus = _subset_corpus(tiny_data.raw, tmp_path / "corpus", 60)
    other = cli("preprocess", corpus, "--out", tmp_path / "other")  # no word vectors: 300-d
    assert other.code == 0
    refused = cli("train", write_recipe(tmp_path / "o.yaml", tmp_path / "other"), "--init",
                  tiny_run.best, "--out", tmp_path / "o", "--device", "cpu")
    assert refused.code == 1 and "embeds words in 50 dimensions, the data in 300" in refused.err
    assert cli("preprocess", corpus, "--out", tmp_path / "data", "--glove",
               tiny_data.raw / "vectors.txt").code == 0
    recipe = write_recipe(tmp_path / "r.yaml", tmp_path / "data", epochs=1)
    run = tmp_path / "run"
    result = cli("train", recipe, "train.lr=1e-12", "--init", tiny_run.best, "--out", run,
                 "--device", "cpu")
    assert result.code == 0, result.err
    old, old_meta = load_checkpoint(tiny_run.best)
    new, new_meta = load_checkpoint(run / "last.safetensors")
    assert new_meta.labels != old_meta.labels[: len(new_meta.labels)]  # another order
    assert set(new_meta.labels) <= set(old_meta.labels)
    shared = [t for t in new_meta.tokens if t in set(old_meta.tokens)]
    assert len(shared) > 50
    old_token = {t: i for i, t in enumerate(old_meta.tokens)}
    new_token = {t: i for i, t in enumerate(new_meta.tokens)}
    table, old_table = new["encoder.embedding.weight"], old["encoder.embedding.weight"]
    for t in shared:
        assert torch.allclose(table[new_token[t]], old_table[old_token[t]], atol=1e-8)
    old_label = {x: i for i, x in enumerate(old_meta.labels)}
    for key in ("output.weight", "output.bias", "label_embedding.weight"):
        assert torch.allclose(new[key][:NUM_SPECIALS], old[key][:NUM_SPECIALS], atol=1e-8)
        for i, label in enumerate(new_meta.labels):
            assert torch.allclose(new[key][NUM_SPECIALS + i],
                                  old[key][NUM_SPECIALS + old_label[label]], atol=1e-8), key
    assert torch.allclose(new["cell.weight_hh"], old["cell.weight_hh"], atol=1e-8)


def test_init_needs_the_checkpoints_label_space(tiny_run, tmp_path, cli):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for split in ("train", "test"):
        (corpus / f"{split}.jsonl").write_text(
            "".join(json.dumps({"text": f"rocket orbit {i}", "labels": ["Brand new"]}) + "\n"
                    for i in range(20)))
    assert cli("preprocess", corpus, "--out", tmp_path / "data").code == 0
    recipe = write_recipe(tmp_path / "r.yaml", tmp_path / "data", epochs=1)
    result = cli("train", recipe, "--init", tiny_run.best, "--out", tmp_path / "run",
                 "--device", "cpu")
    assert result.code == 1 and "'Brand new'" in result.err and "label space" in result.err
    both = cli("train", recipe, "--init", tiny_run.best, "--resume", "--out", tmp_path / "r2")
    assert both.code == 2 and "--init" in both.err
