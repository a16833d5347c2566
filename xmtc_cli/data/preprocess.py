"""Turn a raw corpus into the processed-data folder that training loads (`xmtc preprocess`).

Steps: find the corpus (a catalog NAME or a folder in AttentionXML's layout), read the training
file once while numbering words and labels in order of first appearance, rank both by training
count, hold out a seeded validation split, encode the test (and shipped validation) split with
the training vocabularies, build embeddings from GloVe (and label centroids from the training
split), and write everything atomically.

Choices (see also docs/design.md §5, §9):
- Vocabularies are counted on the training file: the training documents *and* the 10% held out
  from them for validation (which is never trained on), never the test split. Counting on the
  training file keeps every training label in the label vocabulary even when all of its
  documents fall into the held-out part (Reuters has labels with a single training document).
  A corpus that ships `valid_*` files is held out whole: its words and labels are not counted.
- Word ids: 0 `<pad>`, 1 `<unk>`, then words by descending training count, ties in order of
  first appearance; at most `max_vocab` words, the rest read as `<unk>`.
- Label ids: training labels by descending number of training documents, ties in order of first
  appearance; then labels seen only in the gold sets of the validation or test split (in order
  of appearance), which the model can never predict and which count as misses.
- Label embeddings (`--label-embeddings`, `embeddings.label_table`): `names`, the mean vector
  of a name's words (the paper); `centroid`, from the training documents that carry the label;
  or both. Where names mean nothing (Amazon-670K) and no centroids are asked for, no table is
  stored.
- The output folder is replaced whole, so only a folder provably written by xmtc is replaced,
  and never the raw corpus (`_check_out`); input files are never touched.
- Side features (`{split}_features.npy`/`.safetensors`, beyond the paper, docs/design.md §2):
  all of train, test and a shipped valid split have them, or none does. No document is ever
  dropped, so row k stays document k; a validation split held out of the training file takes
  its documents' rows of the training features.
- Problems that do not stop the run (label names that match nothing, vectors that cover no
  word) are returned as warnings, which the CLI prints and the manifest keeps.
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from enum import IntEnum
from pathlib import Path
from typing import Any, Literal

import numpy as np

from xmtc_cli import __version__
from xmtc_cli.data import glove
from xmtc_cli.data.catalog import (
    DATASETS,
    DatasetSpec,
    default_out_dir,
    default_raw_dir,
    find_dataset,
    unknown_dataset,
)
from xmtc_cli.data.corpus import (
    Columns,
    InseparableLabels,
    locate_documents,
    read_corpus_documents,
)
from xmtc_cli.data.embeddings import (
    LabelEmbeddingStats,
    label_table,
    name_words,
    token_table,
)
from xmtc_cli.data.features import corpus_feature_files, read_features
from xmtc_cli.data.processed import (
    ProcessedData,
    Split,
    flatten,
    offsets,
    save_processed,
    why_not_replaceable,
)
from xmtc_cli.data.readers import (
    CorpusFiles,
    Layout,
    check_encoding,
    file_sha256,
    iter_lines,
    locate,
    read_label_ids,
    read_label_names,
    read_labels,
)
from xmtc_cli.data.tokenize import TokenizerKind, tokenizer_from_settings
from xmtc_cli.data.vocab import (
    NUM_SPECIAL_TOKENS,
    UNK_ID,
    FirstSeen,
    Vocabulary,
    label_vocabulary,
    word_vocabulary,
)
from xmtc_cli.errors import DataError, short

LabelEmbeddingKind = Literal["names", "centroid", "names+centroid"]
LABEL_EMBEDDING_KINDS: tuple[str, ...] = ("names", "centroid", "names+centroid")


@dataclass(frozen=True)
class PreprocessOptions:
    """How to read and process a corpus; every field has the documented default."""

    raw: Path | None = None
    """Folder with a named dataset's raw files; None: `$XMTC_DATA/raw/NAME` (else data/raw/NAME)."""
    out: Path | None = None
    """Processed-data folder to write; None: `$XMTC_DATA/NAME` (else data/NAME)."""
    glove: Path | None = None
    """GloVe-format word vectors (.txt or .txt.gz); None: random label embeddings, no word
    embeddings (the demo corpus brings its own vectors)."""
    tokenizer: TokenizerKind = "whitespace"
    """`whitespace` (the paper's code) or `punct` (splits punctuation off words)."""
    lowercase: bool = False
    """Lower-case text before tokenizing."""
    max_vocab: int = 500_000
    """Most frequent training words kept (docs/design.md §5); `<pad>` and `<unk>` come on top."""
    valid_fraction: float = 0.1
    """Share of training documents held out for validation when the corpus ships no valid_*."""
    seed: int = 0
    """Seeds the validation split and the random embedding rows."""
    encoding: str = "utf-8"
    """Encoding of the text, label and name files."""
    label_embeddings: LabelEmbeddingKind = "names"
    """`names`: the mean vector of the words of a label's name (the paper); `centroid`: the
    normalised mean of its training documents' representations; `names+centroid`: the
    normalised sum of both, each normalised (see `embeddings.label_table`)."""
    centroid_weighting: glove.CentroidWeighting = "uniform"
    """A document's representation for centroids: the `uniform` mean of its words' vectors, or
    their `tfidf`-weighted mean."""
    columns: Columns = Columns()
    """Column names and label separator of a CSV/TSV corpus (`corpus.py`)."""

    def __post_init__(self) -> None:
        if self.label_embeddings not in LABEL_EMBEDDING_KINDS:
            raise ValueError(f"label_embeddings must be one of {LABEL_EMBEDDING_KINDS}, "
                             f"not {self.label_embeddings!r}")
        if self.centroid_weighting not in ("uniform", "tfidf"):
            raise ValueError(f"centroid_weighting must be uniform or tfidf, "
                             f"not {self.centroid_weighting!r}")
        if self.max_vocab < 1:
            raise ValueError(f"max_vocab must be positive, not {self.max_vocab}")
        if not 0 <= self.valid_fraction < 1:
            raise ValueError(f"valid_fraction must be in [0, 1), not {self.valid_fraction}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, not {self.seed}")


@dataclass(frozen=True)
class SplitStats:
    """Statistics of one split (label counts over the gold sets, unseen labels included)."""

    docs: int
    words_per_doc: float
    labels_per_doc: float
    max_labels: int
    empty_docs: int
    empty_label_sets: int
    unseen_labels: int
    """Distinct gold labels that are not training labels (they count as misses)."""
    unseen_label_occurrences: int


@dataclass(frozen=True)
class CorpusStats:
    """The paper's Table 1 columns, the training file standing for "train"."""

    train_docs: int
    test_docs: int
    vocabulary: int
    """D: distinct words of the training file (before the `max_vocab` cap)."""
    labels: int
    """L: distinct labels of the training file."""
    labels_per_doc: float
    max_labels: int
    docs_per_label: float
    words_per_doc_train: float
    words_per_doc_test: float


@dataclass(frozen=True)
class Coverage:
    """How much of the corpus the word vectors know."""

    dim: int
    token_share: float
    """Share of training tokens whose word has a vector."""
    word_share: float
    """Share of vocabulary words with a vector."""
    label_share: float
    """Share of training labels whose embedding comes from the vectors (names or centroids)."""
    vector_lines: int
    malformed_lines: int
    """GloVe lines skipped as malformed."""


@dataclass(frozen=True)
class PreprocessSummary:
    """What `preprocess` did: where it wrote, and the statistics it found."""

    dataset: str
    out: Path
    corpus: CorpusStats
    splits: dict[str, SplitStats]
    valid_from: str
    """`held-out` (a share of the training file) or the shipped validation file's name."""
    token_ids: int
    """Size of the token id space: kept words plus `<pad>` and `<unk>`."""
    gold_only_labels: int
    """Labels that occur only in validation or test gold sets."""
    coverage: Coverage | None
    label_embeddings: LabelEmbeddingStats | None = None
    features: int | None = None
    """D, the width of the side features every split carries; None without them."""
    warnings: tuple[str, ...] = ()
    """Problems that did not stop preprocessing but may spoil training (shown on stderr)."""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (paths as strings)."""
        data = asdict(self)
        data["out"] = str(self.out)
        return data


@dataclass(frozen=True)
class _Encoded:
    """One split as read: token ids and offsets (CSR), with the label strings of each document."""

    token_ids: np.ndarray  # int32 [tokens]
    token_offsets: np.ndarray  # int64 [docs + 1]
    labels: list[list[str]]


@dataclass(frozen=True)
class _Training:
    """The training file, read: its vocabularies, and all its documents in final ids."""

    split: Split
    words: Vocabulary
    labels: Vocabulary
    distinct_words: int  # D, before the cap


Progress = Callable[[str], None]


def preprocess(source: str, options: PreprocessOptions = PreprocessOptions(),
               progress: Progress = lambda message: None) -> tuple[Path, PreprocessSummary]:
    """Process the corpus `source` (a catalog name or a folder) into a processed-data folder."""
    start = time.perf_counter()
    encoding = check_encoding(options.encoding)
    warnings: list[str] = []
    spec, name, folder, out = _resolve(source, options)
    _check_out(out, folder, options)
    vectors_path = _vectors_path(options, spec, folder)
    _check_label_embeddings(options, spec, vectors_path)
    if spec is not None and spec.generate is not None and not folder.exists():
        progress(f"generating the {spec.name} corpus in {folder}")
        spec.generate(folder)
    layout = spec.layout if spec else Layout()
    found = locate_documents(folder) if spec is None else None
    files, fmt = found or (locate(folder, layout, _missing_hint(spec, folder)), None)
    settings = {"kind": options.tokenizer, "lowercase": options.lowercase}
    checksums: dict[str, str] = {}
    read = _SplitReader(files, encoding, tokenizer_from_settings(settings), checksums, layout,
                        fmt, options.columns, warnings)
    side = corpus_feature_files(files.folder, files.texts)

    progress(f"reading {files.texts['train']}")
    training = _read_training(read, files, options.max_vocab)
    if side:
        progress(f"reading side features {side['train']}")
        rows = _read_side_features(side["train"], len(training.split), None, checksums)
        training = replace(training, split=replace(training.split, features=rows))
    progress(f"vocabulary: {training.distinct_words:,} words, {len(training.labels):,} labels")
    splits, all_labels, valid_from = _read_splits(read, files, training, options, progress)
    splits = _with_side_features(splits, side, training, checksums)

    num_labels = len(training.labels)
    names = _label_names(files, encoding, checksums, all_labels, warnings)
    vectors = _word_vectors(vectors_path, spec, training.words, names[:num_labels], progress)
    tokens, words_known = token_table(training.words.items, vectors,
                                      _rng(options.seed, _Stream.TOKEN_ROWS))
    if vectors is not None and options.label_embeddings != "names":
        _centroid_progress(options, spec, len(splits["train"]), progress)
    labels, label_stats = label_table(
        options.label_embeddings, names[:num_labels], _names_mean_something(spec), vectors,
        splits["train"], tokens, words_known, options.centroid_weighting,
        _rng(options.seed, _Stream.LABEL_ROWS),
    )
    coverage = _coverage(training.words, words_known, vectors, label_stats, warnings)
    if vectors is not None:
        checksums[vectors.path.name] = vectors.sha256
    summary = PreprocessSummary(
        dataset=name,
        out=out,
        corpus=_corpus_stats(training, splits["test"]),
        splits={split: _split_stats(data, num_labels) for split, data in splits.items()},
        valid_from=valid_from,
        token_ids=len(training.words),
        gold_only_labels=len(all_labels) - num_labels,
        coverage=coverage,
        label_embeddings=label_stats,
        features=None if not side else int(training.split.features.shape[1]),
        warnings=tuple(warnings),
    )
    progress(f"writing {out}")
    manifest = {
        "dataset": name,
        "title": spec.title if spec else name,
        "tokenizer": settings,
        "options": _recorded_options(options, encoding, folder, vectors, valid_from),
        "sources": checksums,
        "stats": _without_run_details(summary),
        "xmtc_version": __version__,
    }
    save_processed(_processed_data(training, splits, all_labels, names, (tokens, labels),
                                   manifest), out)
    return out, replace(summary, seconds=round(time.perf_counter() - start, 2))


def _with_side_features(splits: dict[str, Split], side: dict[str, Path], training: _Training,
                        checksums: dict[str, str]) -> dict[str, Split]:
    """The held-out splits with the side features of `side` (test, and a shipped validation
    split), of the training split's width; train already has its own."""
    splits = dict(splits)
    for split in side.keys() - {"train"}:
        width = training.split.features.shape[1]
        rows = _read_side_features(side[split], len(splits[split]), width, checksums)
        splits[split] = replace(splits[split], features=rows)
    return splits


def _processed_data(training: _Training, splits: dict[str, Split], all_labels: list[str],
                    names: list[str], embeddings: tuple[np.ndarray | None, np.ndarray | None],
                    manifest: dict) -> ProcessedData:
    """What `save_processed` writes; gold-only labels (after the training ones) count 0."""
    tokens, labels = embeddings
    num_labels = len(training.labels)
    return ProcessedData(
        tokens=training.words.items,
        token_counts=training.words.counts,
        labels=all_labels,
        label_names=names,
        label_counts=np.concatenate(
            [training.labels.counts, np.zeros(len(all_labels) - num_labels, dtype=np.int64)]
        ),
        num_labels=num_labels,
        splits=splits,
        label_embeddings=labels,
        token_embeddings=tokens,
        manifest=manifest,
    )


# --- finding the corpus ----------------------------------------------------------------------

def _resolve(source: str,
             options: PreprocessOptions) -> tuple[DatasetSpec | None, str, Path, Path]:
    """(catalog entry or None, dataset name, raw folder, output folder) for `source`.

    A catalog name wins over a folder of the same name; write `./eurlex` for the folder.
    """
    spec = find_dataset(source)
    if spec is not None:
        folder = options.raw or default_raw_dir(spec.name)
        return spec, spec.name, folder, options.out or default_out_dir(spec.name)
    folder = Path(source)
    if folder.is_dir():
        if options.raw is not None:
            raise DataError(f"--raw applies to a dataset name, and {folder} is a folder",
                            "leave out --raw, or name a dataset: " + ", ".join(DATASETS))
        name = folder.resolve().name
        return None, str(folder), folder, options.out or default_out_dir(name)
    if folder.exists():
        raise DataError(f"{folder} is a file; expected a dataset name or a corpus folder")
    if "/" in source or "\\" in source or source.startswith("."):
        raise DataError(f"corpus folder {folder} does not exist", _LAYOUT_HINT)
    raise unknown_dataset(source)


_LAYOUT_HINT = (
    "a corpus folder holds train_texts.txt, train_labels.txt, test_texts.txt and "
    "test_labels.txt (optionally valid_* and label_names.txt)"
)


def _missing_hint(spec: DatasetSpec | None, folder: Path) -> str:
    if spec is None:
        return _LAYOUT_HINT
    if spec.generate is not None:
        return f"remove {folder} and run again: xmtc generates the {spec.name} corpus anew"
    return f"get {spec.source} and put its files in {folder} (or pass --raw DIR)"


def _check_out(out: Path, raw: Path, options: PreprocessOptions) -> None:
    """Refuse an output folder whose replacement could delete anything xmtc did not write.

    The output replaces its folder whole, so that folder must not be, hold or lie inside the
    raw corpus, must not hold the word-vector file, and, if it exists, must be provably an
    earlier output (`processed.why_not_replaceable`).
    """
    what = f"--out {out}" if options.out is not None else f"the output folder {out} (the default)"
    elsewhere = f"write the processed data beside the corpus, e.g. --out {_sibling(raw)}"
    out_abs, raw_abs = out.resolve(), raw.resolve()
    if out_abs == raw_abs:
        raise DataError(f"{what} is the raw corpus folder; writing it would delete the corpus",
                        elsewhere)
    if raw_abs in out_abs.parents:
        raise DataError(f"{what} lies inside the raw corpus folder {raw}", elsewhere)
    if out_abs in raw_abs.parents:
        raise DataError(
            f"the raw corpus folder {raw} lies inside {what}; replacing it would delete the corpus",
            elsewhere,
        )
    if options.glove is not None and out_abs in options.glove.resolve().parents:
        raise DataError(f"the word-vector file {options.glove} lies inside {what}",
                        "pass --out with a folder that does not hold the --glove file")
    why = why_not_replaceable(out)
    if why is not None:
        raise DataError(
            f"{what} exists and is not an earlier output of xmtc: {why}",
            "pass --out with a new folder, or an earlier output of `xmtc preprocess` "
            "(move your own files out of it first)",
        )


def _sibling(raw: Path) -> Path:
    """A suggestion for an output folder beside the raw corpus folder."""
    raw = raw.resolve()
    return raw.with_name(f"{raw.name}-processed")


# --- reading splits --------------------------------------------------------------------------

class _SplitReader:
    """Reads a split's texts and labels, checking that their line counts agree."""

    def __init__(self, files: CorpusFiles, encoding: str, tokenize: Callable[[str], list[str]],
                 checksums: dict[str, str], layout: Layout, fmt: str | None = None,
                 columns: Columns | None = None, warnings: list[str] | None = None):
        self.files, self.encoding, self.checksums = files, encoding, checksums
        self.tokenize = tokenize
        self.fmt, self.columns = fmt, columns or Columns()  # fmt: jsonl/csv/tsv (corpus.py)
        self.warnings = warnings if warnings is not None else []
        self.id_names = None
        if files.label_ids is not None:
            names = read_label_ids(files.label_ids, layout.label_ids_encoding or encoding,
                                   layout.ampersand_is_space, checksums)
            self.id_names = (files.label_ids, names)

    def __call__(self, split: str, encode: Callable[[list[str]], list[int]]) -> _Encoded:
        if self.fmt is not None:
            return self._documents(split, encode)
        labels_path, texts_path = self.files.labels[split], self.files.texts[split]
        labels = read_labels(labels_path, self.encoding, self.checksums, self.id_names)
        if split == "train" and self.id_names is None:
            inseparable = InseparableLabels()
            for doc in labels:
                inseparable.add(doc)
            warning = inseparable.warning(labels_path)
            if warning:
                self.warnings.append(warning)
        ids, lengths = array("i"), []
        tokenize = self.tokenize
        for text in iter_lines(texts_path, self.encoding, self.checksums):
            row = encode(tokenize(text))
            ids.extend(row)
            lengths.append(len(row))
        if len(lengths) != len(labels):
            raise DataError(
                f"{texts_path} has {len(lengths):,} lines but {labels_path} has {len(labels):,}",
                "line k of a texts file is the document whose labels are on line k of its labels "
                "file: the two files must have the same number of lines",
            )
        token_ids = np.frombuffer(ids, dtype=np.intc).astype(np.int32)
        return _Encoded(token_ids, offsets(lengths), labels)

    def _documents(self, split: str, encode: Callable[[list[str]], list[int]]) -> _Encoded:
        """A split of a JSONL/CSV/TSV corpus: texts and labels from one file."""
        ids, lengths, labels = array("i"), [], []
        tokenize = self.tokenize
        for doc in read_corpus_documents(self.files.texts[split], self.fmt, self.encoding,
                                         self.checksums, self.columns):
            row = encode(tokenize(doc.text))
            ids.extend(row)
            lengths.append(len(row))
            labels.append(doc.labels)
        token_ids = np.frombuffer(ids, dtype=np.intc).astype(np.int32)
        return _Encoded(token_ids, offsets(lengths), labels)


def _read_side_features(path: Path, documents: int, width: int | None,
                        checksums: dict[str, str]) -> np.ndarray:
    """float32 [documents, D] from `path` (`read_features` checks rows and finiteness), of the
    training features' width `width` when given; its sha256 goes into `checksums`."""
    rows = read_features(path, documents=documents)
    if width is not None and rows.shape[1] != width:
        raise DataError(f"{path} has features of width {rows.shape[1]}, the training split's "
                        f"have {width}", "compute every split's features the same way")
    checksums[path.name] = file_sha256(path)
    return rows


def _read_training(read: _SplitReader, files: CorpusFiles, max_vocab: int) -> _Training:
    """Read the training file once, counting words and labels as they first appear."""
    words, labels = FirstSeen(), FirstSeen()
    encoded = read(split="train", encode=words.add)
    if not encoded.labels:
        raise DataError(
            f"{files.texts['train']}: no documents (the training split is empty)",
            f"write one document a line, with its labels on the same line of "
            f"{files.labels['train'].name}",
        )
    label_ids = [labels.add(doc) for doc in encoded.labels]
    if not labels.index:
        raise DataError(
            f"{files.labels['train']}: no line holds a label",
            "give each training document its labels, space-separated, on its line",
        )
    flat_labels = flatten(label_ids)
    vocab, word_remap = word_vocabulary(words, _counts(encoded.token_ids, words), max_vocab)
    label_vocab, label_remap = label_vocabulary(labels, _counts(flat_labels, labels))
    split = Split(
        token_ids=word_remap[encoded.token_ids],
        token_offsets=encoded.token_offsets,
        label_ids=label_remap[flat_labels],
        label_offsets=offsets([len(doc) for doc in label_ids]),
    )
    return _Training(split, vocab, label_vocab, len(words.index))


def _counts(first_seen_ids: np.ndarray, seen: FirstSeen) -> np.ndarray:
    return np.bincount(first_seen_ids, minlength=len(seen.index)).astype(np.int64)


def _read_splits(read: _SplitReader, files: CorpusFiles, training: _Training,
                 options: PreprocessOptions,
                 progress: Progress) -> tuple[dict[str, Split], list[str], str]:
    """(train, valid and test splits; all labels, gold-only ones last; where valid came from)."""
    gold = _GoldLabels(training.labels)
    encode = _word_encoder(training.words)
    if "valid" in files.texts:
        progress(f"reading {files.texts['valid']}")
        train, valid = training.split, gold.split(read(split="valid", encode=encode))
        valid_from = files.texts["valid"].name
    else:
        rng = _rng(options.seed, _Stream.VALID_SPLIT)
        held_out = _held_out(len(training.split), options.valid_fraction, rng)
        train, valid = training.split.select(~held_out), training.split.select(held_out)
        valid_from = "held-out"
    progress(f"reading {files.texts['test']}")
    test = gold.split(read(split="test", encode=encode))
    return {"train": train, "valid": valid, "test": test}, gold.labels, valid_from


def _word_encoder(vocab: Vocabulary) -> Callable[[list[str]], list[int]]:
    """Words -> final ids, `<unk>` for words outside the vocabulary (held-out splits)."""
    get = vocab.index.get
    return lambda words: [get(word, UNK_ID) for word in words]


class _GoldLabels:
    """Label ids for held-out splits: training labels, then gold-only labels as they appear."""

    def __init__(self, label_vocab: Vocabulary):
        self.index = dict(label_vocab.index)

    @property
    def labels(self) -> list[str]:
        return list(self.index)

    def split(self, encoded: _Encoded) -> Split:
        index = self.index
        label_ids = [[index.setdefault(x, len(index)) for x in doc] for doc in encoded.labels]
        return Split(
            token_ids=encoded.token_ids,
            token_offsets=encoded.token_offsets,
            label_ids=flatten(label_ids),
            label_offsets=offsets([len(doc) for doc in label_ids]),
        )


class _Stream(IntEnum):
    """What a random stream is for: each use draws from its own, so one never shifts another.

    The numbers seed the streams: changing one changes the output of every seed.
    """

    VALID_SPLIT = 0
    TOKEN_ROWS = 1  # embeddings of words without a vector
    LABEL_ROWS = 2  # embeddings of labels without a name vector (or centroid)


def _rng(seed: int, purpose: _Stream) -> np.random.Generator:
    return np.random.default_rng([int(purpose), seed])


def _held_out(docs: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """bool [docs]: a seeded random `fraction` of the documents (rounded), for validation."""
    mask = np.zeros(docs, dtype=bool)
    mask[rng.permutation(docs)[: int(docs * fraction + 0.5)]] = True
    return mask


def _label_names(files: CorpusFiles, encoding: str, checksums: dict[str, str],
                 labels: list[str], warnings: list[str]) -> list[str]:
    """Readable name of each label: from label_names.txt where given, else the label.

    Names of labels that occur in no label file are unused, and warned about: they usually
    mean a names file from another corpus or another spelling of the labels.
    """
    if files.label_names is None:
        return list(labels)
    path = files.label_names
    names = read_label_names(path, encoding, checksums, warnings)
    if names:
        known = set(labels)
        unused = [(label, line) for label, (_, line) in names.items() if label not in known]
        if len(unused) == len(names):
            warnings.append(
                f"{path}: none of its {len(names):,} labels occurs in the label files, so no "
                f"name is used; its first column must hold the labels as "
                f"{files.labels['train'].name} writes them"
            )
        elif unused:
            label, line = unused[0]
            warnings.append(
                f"{path}: {len(unused):,} of its {len(names):,} labels occur in no label file; "
                f"their names are unused (the first: {short(label)} on line {line})"
            )
    return [names[label][0] if label in names else label for label in labels]


# --- embeddings ------------------------------------------------------------------------------

def _vectors_path(options: PreprocessOptions, spec: DatasetSpec | None,
                  folder: Path) -> Path | None:
    """The word-vector file: --glove, else the corpus's own (the demo's), else None."""
    if options.glove is not None:
        return options.glove
    if spec is not None and spec.vectors is not None:
        return folder / spec.vectors
    return None


def _check_label_embeddings(options: PreprocessOptions, spec: DatasetSpec | None,
                            vectors: Path | None) -> None:
    """Refuse, before reading anything, a --label-embeddings choice that cannot be made."""
    kind = options.label_embeddings
    if kind != "names" and vectors is None:
        raise DataError(
            f"--label-embeddings {kind} needs word vectors: centroids are means of them",
            "pass --glove FILE (e.g. glove.840B.300d.txt), or leave out --label-embeddings",
        )
    if kind == "names+centroid" and not _names_mean_something(spec):
        raise DataError(
            f"--label-embeddings names+centroid: the labels of {spec.name} are item numbers, "
            "their names say nothing",
            "use --label-embeddings centroid",
        )


def _word_vectors(path: Path | None, spec: DatasetSpec | None, vocab: Vocabulary,
                  label_names: list[str], progress: Progress) -> glove.WordVectors | None:
    """The vectors of the vocabulary and label-name words in `path`, or None without a file."""
    if path is None:
        return None
    wanted = vocab.items[NUM_SPECIAL_TOKENS:]
    if _names_mean_something(spec):
        wanted += [word for name in label_names for word in name_words(name)]
    progress(f"reading word vectors from {path}")
    return glove.read_word_vectors(path, wanted)


def _centroid_progress(options: PreprocessOptions, spec: DatasetSpec | None, documents: int,
                       progress: Progress) -> None:
    """Say that label centroids are being built, and where the recipe will not use them."""
    progress(f"label embeddings: {options.centroid_weighting} centroids of "
             f"{documents:,} training documents")
    if not _names_mean_something(spec):
        progress(f"note: recipes/{spec.name}.yaml sets model.label_embedding_size, which draws "
                 "random label embeddings; train with model.label_embedding_size=null to use "
                 "these centroids (and loss.ot_weight=8 for the OT term)")


def _coverage(vocab: Vocabulary, words_known: np.ndarray, vectors: glove.WordVectors | None,
              labels: LabelEmbeddingStats, warnings: list[str]) -> Coverage | None:
    """How much the vectors cover, with a warning where they cover no training token."""
    if vectors is None:
        return None
    coverage = Coverage(
        dim=vectors.dim,
        token_share=_share(vocab.counts[words_known].sum(), vocab.counts.sum()),
        word_share=_share(words_known.sum(), len(vocab) - NUM_SPECIAL_TOKENS),
        label_share=_share(
            labels.from_names + labels.from_centroids + labels.from_both,
            labels.from_names + labels.from_centroids + labels.from_both + labels.random,
        ),
        vector_lines=vectors.lines,
        malformed_lines=vectors.malformed,
    )
    if coverage.token_share == 0:
        warnings.append(
            f"{vectors.path} has a vector for none of the training words, so every word "
            "embedding is random; check the file's language and case (GloVe 6B is lower-case: "
            "add --lowercase)"
        )
    elif labels.kind == "names" and labels.dim is not None and labels.from_names == 0:
        warnings.append(
            f"{vectors.path} has a vector for no word of any label name, so every label "
            "embedding is random; --label-embeddings centroid builds them from the documents"
        )
    return coverage


def _names_mean_something(spec: DatasetSpec | None) -> bool:
    """Whether label names are words (not Amazon-670K's item numbers)."""
    return spec is None or not spec.random_label_embeddings


# --- statistics and manifest -----------------------------------------------------------------

def _share(part: float, whole: float) -> float:
    return round(float(part) / float(whole), 4) if whole else 0.0


def _mean(total: float, count: int) -> float:
    return round(float(total) / float(count), 2) if count else 0.0


def _split_stats(split: Split, num_labels: int) -> SplitStats:
    doc_words = np.diff(split.token_offsets)
    doc_labels = np.diff(split.label_offsets)
    unseen = split.label_ids[split.label_ids >= num_labels]
    return SplitStats(
        docs=len(split),
        words_per_doc=_mean(doc_words.sum(), len(split)),
        labels_per_doc=_mean(doc_labels.sum(), len(split)),
        max_labels=int(doc_labels.max(initial=0)),
        empty_docs=int((doc_words == 0).sum()),
        empty_label_sets=int((doc_labels == 0).sum()),
        unseen_labels=len(np.unique(unseen)),
        unseen_label_occurrences=len(unseen),
    )


def _corpus_stats(training: _Training, test: Split) -> CorpusStats:
    split = training.split
    docs = len(split)
    return CorpusStats(
        train_docs=docs,
        test_docs=len(test),
        vocabulary=training.distinct_words,
        labels=len(training.labels),
        labels_per_doc=_mean(len(split.label_ids), docs),
        max_labels=int(np.diff(split.label_offsets).max()),
        docs_per_label=_mean(training.labels.counts.sum(), len(training.labels)),
        words_per_doc_train=_mean(len(split.token_ids), docs),
        words_per_doc_test=_mean(len(test.token_ids), len(test)),
    )


def _recorded_options(options: PreprocessOptions, encoding: str, folder: Path,
                      vectors: glove.WordVectors | None, valid_from: str) -> dict[str, Any]:
    """The options as the manifest records them (everything needed to re-run the command)."""
    centroids = options.label_embeddings != "names"
    return {
        "raw": str(folder),
        "max_vocab": options.max_vocab,
        "seed": options.seed,
        "valid_fraction": options.valid_fraction if valid_from == "held-out" else None,
        "valid_from": valid_from,
        "encoding": encoding,
        "glove": None if vectors is None else {"path": str(vectors.path), "dim": vectors.dim},
        "label_embeddings": options.label_embeddings,
        "centroid_weighting": options.centroid_weighting if centroids else None,
    }


def _without_run_details(summary: PreprocessSummary) -> dict[str, Any]:
    """The summary as stored in the manifest: statistics only, no output path or timing."""
    data = summary.to_dict()
    for key in ("out", "seconds"):
        data.pop(key)
    return data
