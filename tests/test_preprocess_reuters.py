"""`preprocess` on the shared Reuters-21578 corpus (R90), skipped where the data is absent."""

from pathlib import Path

import numpy as np
import pytest

from xmtc_cli.data.preprocess import PreprocessOptions, preprocess
from xmtc_cli.data.processed import load_processed

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REUTERS = SHARED / "reuters21578"
GLOVE = SHARED / "glove.6B.50d.txt.gz"
GLOVE_SHA256 = "1f3ebd56c8c086fa326f9f1746a9cdd289275415c439497899dcf226fd6eef93"

needs_reuters = pytest.mark.skipif(
    not (REUTERS / "train_texts.txt").is_file(), reason=f"no Reuters corpus at {REUTERS}"
)


@needs_reuters
def test_reuters_statistics_without_glove(tmp_path):
    out, summary = preprocess(str(REUTERS), PreprocessOptions(out=tmp_path / "reuters"))
    corpus = summary.corpus
    assert (corpus.train_docs, corpus.test_docs, corpus.labels) == (7770, 3019, 90)
    assert corpus.max_labels == 15 and corpus.labels_per_doc == pytest.approx(1.23, abs=0.01)
    assert corpus.words_per_doc_train == pytest.approx(129.5, abs=0.1)  # the data README
    assert summary.splits["train"].docs == 6993 and summary.splits["valid"].docs == 777
    assert summary.splits["test"].unseen_labels == 0 and summary.gold_only_labels == 0
    data = load_processed(out)
    assert data.num_labels == 90 and data.labels[0] == "earn"
    assert data.label_names[data.labels.index("money-fx")] == "Money/Foreign Exchange"
    assert data.token_embeddings is None and data.label_embeddings.shape == (90, 100)


@needs_reuters
@pytest.mark.skipif(not GLOVE.is_file(), reason=f"no GloVe 6B 50d file at {GLOVE}")
def test_reuters_with_glove_6b_50d(tmp_path):
    options = PreprocessOptions(out=tmp_path / "reuters", glove=GLOVE, tokenizer="punct",
                                lowercase=True)
    out, summary = preprocess(str(REUTERS), options)
    coverage = summary.coverage
    assert coverage.dim == 50 and coverage.vector_lines == 400_000
    assert coverage.token_share > 0.95 and coverage.label_share > 0.95
    data = load_processed(out)
    assert data.token_embeddings.shape == (len(data.tokens), 50)
    assert data.label_embeddings.shape == (90, 50)
    assert np.abs(data.label_embeddings[data.labels.index("crude")]).max() > 0.1  # a GloVe mean
    assert data.manifest["sources"][GLOVE.name] == GLOVE_SHA256
