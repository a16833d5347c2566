"""Word vectors: stream a GloVe file for the words needed, and build embedding matrices from it.

Format: one `word v1 ... vD` per line, space-separated, `.txt` or gzip-compressed (recognised by
its magic bytes, whatever its name); a leading word2vec header `COUNT DIM` is skipped. The file
is never loaded whole (GloVe 840B is 5.6 GB in 2.2 M lines): each line's first field is split
off and looked up as bytes, and only the lines of wanted words are decoded and parsed. Lines
with a word containing spaces or with non-numeric values (840B has a few) are skipped and
counted. Errors, each naming the line: a line of a different number of values (the file mixes
dimensions, or disagrees with its header); a nan or inf value (in any line; a value beyond
float32's range only in a wanted line, the only ones parsed). A file with no vector line at all
(empty, header only, or a binary word2vec .bin file) is refused rather than read as 0% coverage.

Embeddings follow the paper: a word's row is its vector, or U(-0.1, 0.1) where the file has
none (`<pad>` is zero); a label's row is the mean of the vectors of the words of its name that
have one (the paper's code averages in a random vector for each unknown word, which only adds
noise), or U(-0.1, 0.1) where none has. Words are looked up as written, then lower-cased, so
cased (840B) and lower-cased (6B) vectors both serve cased text.
"""

from __future__ import annotations

import gzip
import io
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from scipy import sparse

from xmtc_cli.data.readers import open_checksummed
from xmtc_cli.errors import DataError, at
from xmtc_cli.fileerrors import resolved

_GZIP_MAGIC = b"\x1f\x8b"
# Label names are `_`-joined (Eurlex), hyphenated or spaced phrases ("Money/Foreign Exchange").
_NAME_SEPARATORS = re.compile(r"[\s_\-/&,;:()]+")
INIT_RANGE = 0.1  # U(-0.1, 0.1) for words and labels without a vector


@dataclass(frozen=True)
class WordVectors:
    """The vectors a word-vector file holds for the words that were asked for."""

    path: Path
    dim: int
    vectors: dict[str, np.ndarray]  # word -> float32 [dim]
    lines: int  # vector lines read (a header excluded)
    malformed: int  # lines skipped: a word with spaces, a missing or non-numeric value
    sha256: str  # of the file as stored (compressed or not)

    def get(self, word: str) -> np.ndarray | None:
        """The vector of `word`, else of its lower-case form (lower-cased vectors: GloVe 6B)."""
        vector = self.vectors.get(word)
        return vector if vector is not None else self.vectors.get(word.lower())


def read_word_vectors(path: str | Path, words: Iterable[str]) -> WordVectors:
    """Read the vectors of `words` (and of their lower-case forms) from a GloVe file."""
    path = Path(path)
    # Anything that reads as a stream will do: a file, or a pipe (`--glove <(zcat FILE)`).
    if not path.exists() or path.is_dir():
        raise DataError(
            f"word-vector file {path} "
            + ("is a folder" if path.is_dir() else "does not exist" + resolved(path)),
            "pass a GloVe .txt or .txt.gz file (e.g. glove.840B.300d.txt), or leave out --glove",
        )
    wanted: dict[bytes, str] = {}
    for word in words:
        for form in (word, word.lower()):
            wanted.setdefault(form.encode("utf-8"), form)
    stream, checksum = open_checksummed(path)
    with stream:
        dim, vectors, lines, malformed = _scan(path, _lines(path, stream), wanted)
    return WordVectors(path, dim, vectors, lines, malformed, checksum.sha256.hexdigest())


def _lines(path: Path, stream: io.BufferedReader) -> Iterator[bytes]:
    """The file's lines, decompressed if it is gzip, with damage reported as a DataError."""
    source = gzip.GzipFile(fileobj=stream) if stream.peek(2)[:2] == _GZIP_MAGIC else stream
    try:
        yield from source
    except (EOFError, OSError, zlib.error) as exc:  # truncated or corrupt gzip
        raise DataError(
            f"{path} is damaged: {exc}", "download the file again (`gzip -t FILE` checks a .gz)"
        ) from None


def _scan(path: Path, lines: Iterator[bytes],
          wanted: dict[bytes, str]) -> tuple[int, dict[str, np.ndarray], int, int]:
    """(dimension, wanted vectors, vector lines, malformed lines) of the file's lines."""
    dim = 0
    header = False
    vectors: dict[str, np.ndarray] = {}
    count = malformed = 0
    for lineno, line in enumerate(lines, 1):
        if lineno <= _SNIFF_LINES and b"\0" in line:
            raise _binary(path)
        line = line.rstrip()
        if not dim:
            dim = _dimension(path, line)
            if _is_header(line):
                header = True
                continue
        count += 1
        word, _, rest = line.partition(b" ")
        # Fast path: a well-formed line has exactly dim - 1 spaces after the word.
        if rest.count(b" ") != dim - 1 and not _has_values(path, lineno, rest, dim, header):
            malformed += 1
            continue
        # Every number format has no `n`; nan, inf and infinity have one (in any case).
        if b"n" in rest or b"N" in rest:
            _check_finite(path, lineno, rest)
        form = wanted.get(word)
        if form is None or form in vectors:  # unwanted, or a duplicate: the first one wins
            continue
        try:
            with np.errstate(over="ignore"):  # a value too large for float32 becomes inf
                vector = np.array(rest.split(), dtype=np.float32)
        except ValueError:
            malformed += 1
            continue
        if not np.isfinite(vector).all():
            raise _not_finite(path, lineno)
        vectors[form] = vector
    _check_vectors_found(path, dim, count, malformed)
    return dim, vectors, count, malformed


_SNIFF_LINES = 100  # lines checked for NUL bytes, the mark of a binary file


def _binary(path: Path) -> DataError:
    return DataError(
        f"{path} is a binary file, not GloVe text (a word2vec .bin file?)",
        "pass vectors as text, one `word v1 ... vD` a line; gensim converts a .bin file: "
        "KeyedVectors.load_word2vec_format(BIN, binary=True).save_word2vec_format(TXT)",
    )


def _check_vectors_found(path: Path, dim: int, count: int, malformed: int) -> None:
    """Refuse a file with no usable vector line (which would give 0% coverage silently)."""
    fix = "pass a GloVe file with one `word v1 ... vD` a line"
    if not dim:
        raise DataError(f"{path} is empty", fix)
    if not count:
        raise DataError(f"{path} holds a header line but no vectors", fix)
    if malformed == count:
        raise DataError(
            f"none of the {count:,} lines of {path} is `word v1 ... v{dim}`",
            f"{fix}, separated by single spaces (a binary .bin file must be converted to text)",
        )


def _check_finite(path: Path, lineno: int, rest: bytes) -> None:
    """Refuse a line of numbers that holds nan or inf (a word with such a vector poisons
    training); a line with other non-numeric values is merely malformed."""
    try:
        with np.errstate(over="ignore"):
            values = np.array(rest.split(), dtype=np.float32)
    except ValueError:
        return
    if not np.isfinite(values).all():
        raise _not_finite(path, lineno)


def _not_finite(path: Path, lineno: int) -> DataError:
    return DataError(
        f"{at(path, lineno)}: the vector holds nan or inf values",
        "the file is damaged or was written by a diverged training run: use another copy",
    )


def _is_header(line: bytes) -> bool:
    fields = line.split()
    return len(fields) == 2 and all(f.isdigit() for f in fields)


def _dimension(path: Path, first: bytes) -> int:
    """The vector size announced by the first line (a word2vec header or a first vector)."""
    fields = first.split()
    dim = int(fields[1]) if _is_header(first) else len(fields) - 1
    if dim < 1:
        raise DataError(
            f"{at(path, 1)}: expected `word v1 ... vD`, found {first[:60]!r}",
            "pass a GloVe text file (.txt or .txt.gz)",
        )
    return dim


def _has_values(path: Path, lineno: int, rest: bytes, dim: int, header: bool) -> bool:
    """Whether an irregularly spaced line still holds `dim` values (else it is malformed).

    A line of only numbers but a different count means the file disagrees with itself on the
    dimension (mixed or truncated files): that is an error, not a line to skip.
    """
    fields = rest.split()
    if len(fields) == dim:
        return True
    if fields and all(_is_number(f) for f in fields):
        where = "the header (line 1) announces" if header else "the file's vectors have"
        raise DataError(
            f"{at(path, lineno)}: {len(fields)} values where {where} {dim}",
            "the file mixes vectors of different sizes or is cut short: download it again",
        )
    return False


def _is_number(field: bytes) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


def name_words(name: str) -> list[str]:
    """The words of a label name, for its embedding."""
    return [word for word in _NAME_SEPARATORS.split(name) if word]


def token_embeddings(tokens: list[str], vectors: WordVectors, pad: int,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """float32 [tokens, dim] rows from `vectors`, U(-0.1, 0.1) elsewhere, zero for `pad`;
    and the bool mask of tokens that had a vector."""
    table = rng.uniform(-INIT_RANGE, INIT_RANGE, (len(tokens), vectors.dim)).astype(np.float32)
    known = np.zeros(len(tokens), dtype=bool)
    for i, token in enumerate(tokens):
        vector = vectors.get(token)
        if vector is not None:
            table[i], known[i] = vector, True
    table[pad] = 0.0
    known[pad] = False
    return table, known


def label_embeddings(names: list[str], vectors: WordVectors,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """float32 [labels, dim]: the mean vector of each name's known words, U(-0.1, 0.1) where
    no word is known; and the bool mask of labels with a known word."""
    table = rng.uniform(-INIT_RANGE, INIT_RANGE, (len(names), vectors.dim)).astype(np.float32)
    means, known = name_means(names, vectors)
    table[known] = means[known]
    return table, known


def name_means(names: list[str], vectors: WordVectors) -> tuple[np.ndarray, np.ndarray]:
    """float32 [labels, dim]: the mean vector of each name's known words, zero where no word
    is known; and the bool mask of labels with a known word."""
    table = np.zeros((len(names), vectors.dim), dtype=np.float32)
    known = np.zeros(len(names), dtype=bool)
    for i, name in enumerate(names):
        found = [v for v in map(vectors.get, name_words(name)) if v is not None]
        if found:
            table[i], known[i] = np.mean(found, axis=0), True
    return table, known


CentroidWeighting = Literal["uniform", "tfidf"]
_CHUNK_DOCS = 8192  # documents per sparse product: bounds the working memory, not the result


def label_centroids(token_ids: np.ndarray, token_offsets: np.ndarray, label_ids: np.ndarray,
                    label_offsets: np.ndarray, word_table: np.ndarray, word_known: np.ndarray,
                    num_labels: int, weighting: CentroidWeighting = "uniform",
                    chunk_docs: int = _CHUNK_DOCS) -> tuple[np.ndarray, np.ndarray]:
    """Each label's embedding from its documents' words (label enrichment as in ViXML).

    Takes documents as CSR arrays (token_ids [tokens], token_offsets [docs + 1], label_ids
    [labels], label_offsets [docs + 1]), `word_table` float32 [vocab, dim] and `word_known`
    bool [vocab] (words whose row is a real vector). A document's representation is the mean
    of the vectors of its known words (`uniform`), or their mean weighted by idf (`tfidf`:
    each occurrence counts idf(w) = ln((1 + docs) / (1 + df(w))) + 1, so a word counts
    tf * idf); a document without a known word has none.

    A label's centroid is the mean of its documents' representations minus the mean of all
    documents' representations, L2-normalised. Centring matters: averaged word vectors share
    one large common direction (Mu & Viswanath, "All-but-the-top", 2018), and uncentred
    centroids of Reuters' 90 labels have a mean pairwise cosine of 0.96, which would leave the
    OT cost 1 - cos nearly constant; centred, 0.41, while each test document's nearest
    centroid is one of its labels as often (61%). A label whose mean is the overall mean (it
    is on every document) has no direction of its own and gets no centroid.

    Returns float32 [num_labels, dim] (zero rows for labels without a centroid) and int64
    [num_labels], how many documents each centroid is the mean of (0: none). Documents go
    through in chunks, each as two sparse products (docs x words by words x dim, then labels x
    docs by that), so memory is the [num_labels, dim] result plus one chunk: no [docs, labels]
    or [docs, dim] matrix is ever built.
    """
    vocab, dim = word_table.shape
    docs = len(token_offsets) - 1
    word_weight = word_known.astype(np.float32)  # [vocab]
    if weighting == "tfidf":
        word_weight *= _idf(token_ids, token_offsets, vocab, chunk_docs)
    elif weighting != "uniform":
        raise ValueError(f"weighting must be uniform or tfidf, not {weighting!r}")
    sums = np.zeros((num_labels, dim), dtype=np.float32)
    counts = np.zeros(num_labels, dtype=np.int64)
    all_sum, all_count = np.zeros(dim, dtype=np.float64), 0
    for start in range(0, docs, chunk_docs):
        stop = min(start + chunk_docs, docs)
        rows = stop - start
        # Document representations of the chunk: x [rows, vocab] holds each token's weight.
        first, last = token_offsets[start], token_offsets[stop]
        tokens = token_ids[first:last]
        x = sparse.csr_matrix((word_weight[tokens], tokens, token_offsets[start:stop + 1] - first),
                              shape=(rows, vocab))
        total = np.asarray(x.sum(axis=1)).ravel()  # [rows]
        has = total > 0
        reps = x @ word_table  # [rows, dim]
        reps[has] /= total[has, None]
        all_sum += reps[has].sum(axis=0, dtype=np.float64)
        all_count += int(has.sum())
        # Add each representation to its labels' sums: y [present labels, rows] is 0/1.
        first, last = label_offsets[start], label_offsets[stop]
        labels = label_ids[first:last]
        owner = np.repeat(np.arange(rows), np.diff(label_offsets[start:stop + 1]))
        keep = has[owner] & (labels < num_labels)
        labels, owner = labels[keep], owner[keep]
        if not len(labels):
            continue
        present, row_of = np.unique(labels, return_inverse=True)
        y = sparse.csr_matrix((np.ones(len(labels), dtype=np.float32), (row_of, owner)),
                              shape=(len(present), rows))
        sums[present] += y @ reps
        counts += np.bincount(labels, minlength=num_labels)
    # In place, with `where` rather than boolean indexing, which would copy [labels, dim].
    overall = (all_sum / max(all_count, 1)).astype(np.float32)  # [dim]
    found = (counts > 0)[:, None]  # [labels, 1]
    np.divide(sums, np.maximum(counts, 1)[:, None].astype(np.float32), out=sums)
    np.subtract(sums, overall, out=sums, where=found)
    norms = np.sqrt(np.einsum("ij,ij->i", sums, sums))  # [labels]
    # Float32 sums of many documents differ from the overall mean by rounding alone.
    found &= (norms > 1e-4 * float(np.linalg.norm(overall)))[:, None]
    np.divide(sums, np.maximum(norms, 1e-30)[:, None], out=sums, where=found)
    np.multiply(sums, found, out=sums)  # zero rows without a centroid
    counts[~found[:, 0]] = 0
    return sums, counts


def _idf(token_ids: np.ndarray, token_offsets: np.ndarray, vocab: int,
         chunk_docs: int) -> np.ndarray:
    """float32 [vocab]: ln((1 + docs) / (1 + df)) + 1, df counting the documents with the word."""
    docs = len(token_offsets) - 1
    df = np.zeros(vocab, dtype=np.int64)
    for start in range(0, docs, chunk_docs):
        stop = min(start + chunk_docs, docs)
        first, last = token_offsets[start], token_offsets[stop]
        tokens = token_ids[first:last].copy()  # sum_duplicates sorts its indices in place
        x = sparse.csr_matrix((np.ones(len(tokens), dtype=bool), tokens,
                               token_offsets[start:stop + 1] - first), shape=(stop - start, vocab))
        x.sum_duplicates()  # one entry per (document, word)
        df += np.bincount(x.indices, minlength=vocab)
    return (np.log((1.0 + docs) / (1.0 + df)) + 1.0).astype(np.float32)


def unit_rows(table: np.ndarray) -> np.ndarray:
    """`table` with every non-zero row scaled to length 1 (zero rows stay zero)."""
    norms = np.linalg.norm(table, axis=1, keepdims=True)
    return np.divide(table, norms, out=np.zeros_like(table), where=norms > 0)


def random_embeddings(rows: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """float32 [rows, dim] drawn from U(-0.1, 0.1), for labels whose names carry no meaning."""
    return rng.uniform(-INIT_RANGE, INIT_RANGE, (rows, dim)).astype(np.float32)
