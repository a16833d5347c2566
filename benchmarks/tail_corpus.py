"""A tail-heavy synthetic corpus for benchmarks: thousands of labels with power-law frequencies.

Like the demo corpus (`xmtc_cli.data.synthetic`) its documents are drawn from label-specific
topic words plus shared noise words, its labels have readable names made of words with vectors,
and it ships a GloVe-format `vectors.txt` whose geometry carries the labels' meaning. Unlike it,
most labels are rare: label frequencies follow a power law, so that most labels have 2-5
training documents and a head of about twenty labels has hundreds.

Labels. `themes x qualifiers` readable names, e.g. `railway_safety` "Railway safety": a theme
noun (60 of them: river, music, banking, ...) and a qualifier (50: policy, history, safety,
...), all ordinary English words. A label's training count is `max(min_count, head_count *
r^-a)` for its frequency rank r (ranks are a seeded permutation, so the head is spread over the
themes); `a` is solved so that the counts add up to the training label slots.

Documents. A document has 3-5 labels (`set_sizes`). Its first label is drawn in proportion to
frequency; each further label comes, with probability `same_theme`, from the first label's theme
(labels co-occur as in real corpora), else from all labels. Training documents draw from the
remaining count quota of each label, so the training counts are the power law's (up to a few
slots left over at the end); validation and test documents are drawn independently with
probabilities proportional to the same counts, so a label with 2 training documents turns up
in about one test document in two. A document's `length` words are noise words (a Zipf
distribution over common English filler and pseudo-words), except `topic_share` of them (at
least two per label), which are the topic words of its labels, dealt round-robin; each noise
slot holds, with probability `stray`, a topic word of a uniformly chosen label (so a rare
label's words also occur in documents without it). A label's topic words: the two words of its
name, `own_words` pseudo-words of its own, and `theme_words` of its theme's pool
(`theme_pool` pseudo-words shared by the theme's labels).

Vectors (`dim`-d). Each theme and each qualifier has a random unit direction; a label's
direction mixes its theme's, its qualifier's and its own (0.6 / 0.5 / 0.6) and has norm 3. A
name word lies at 3x its theme's or qualifier's direction, a label's own words near the label's
direction, a theme-pool word near the theme's direction (Gaussian noise 0.15 per coordinate),
noise words anywhere (0.4 per coordinate). So a label's name embedding (the mean of its name
words' vectors, what `xmtc preprocess --glove` builds) points close to, not exactly at, the
label's direction (cosine about 0.8), and the centroid of a label's documents' word vectors
points there too.

Written in the DIR layout `xmtc preprocess` reads: `{train,valid,test}_{texts,labels}.txt`,
`label_names.txt` (`label<TAB>name`) and `vectors.txt`. The validation files make every
contender (xmtc and the linear baseline) tune on the same documents.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xmtc_cli.atomic import atomic_dir
from xmtc_cli.data import synthetic

VECTORS_FILE = "vectors.txt"

THEMES = tuple("""
river music banking medicine farming aviation railway mining fashion football chess cinema
poetry energy weather forest ocean desert mountain island village school university hospital
prison army navy police church museum library theatre restaurant hotel garden bakery brewery
wine fishing hunting shipping software internet robotics chemistry physics astronomy biology
geology insurance taxation election parliament diplomacy tourism television radio newspaper
housing airport
""".split())

QUALIFIERS = tuple("""
policy history safety research trade education festival industry law equipment training
pollution funding design marketing recruitment maintenance construction regulation technology
statistics workers exports prices competition awards accidents strikes reform heritage
scandal budget standards ethics careers archives innovation security management leadership
conference volunteers partnerships investment licensing disputes subsidies tournaments
exhibitions sponsorship
""".split())

FILLER = synthetic.FILLER  # the demo corpus's English filler words

_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


@dataclass(frozen=True)
class TailSpec:
    """The generator's parameters; the defaults are the benchmark's corpus."""

    seed: int = 0
    themes: int = 60
    qualifiers: int = 50
    labels: int = 3000  # at most themes x qualifiers
    train_docs: int = 6000
    valid_docs: int = 600
    test_docs: int = 1500
    set_sizes: tuple[tuple[int, float], ...] = ((3, 0.35), (4, 0.35), (5, 0.30))
    head_count: int = 900  # training documents of the most frequent label
    min_count: int = 2  # training documents of the rarest labels
    same_theme: float = 0.5
    length: tuple[int, int] = (50, 70)  # words per document, uniform, inclusive
    topic_share: float = 0.3
    stray: float = 0.05
    own_words: int = 4
    theme_words: int = 6
    theme_pool: int = 40
    noise_words: int = 600  # pseudo-words besides the English filler
    dim: int = 50


@dataclass(frozen=True)
class Label:
    label: str  # e.g. railway_safety
    name: str  # e.g. Railway safety
    theme: int
    qualifier: int
    topics: tuple[str, ...]  # topic words, name words first


def power_law_counts(spec: TailSpec, total: int) -> tuple[np.ndarray, float]:
    """(training count of frequency ranks 1..labels, exponent a): max(min_count, head r^-a),
    rounded, summing to `total` (the leftover of rounding goes to the head)."""
    ranks = np.arange(1, spec.labels + 1, dtype=float)

    def counts(a: float) -> np.ndarray:
        return np.maximum(spec.min_count, np.rint(spec.head_count * ranks ** -a)).astype(int)

    if counts(50.0).sum() > total or counts(0.0).sum() < total:
        raise ValueError(f"no power law with head {spec.head_count} and minimum "
                         f"{spec.min_count} has {total} label slots over {spec.labels} labels")
    low, high = 0.0, 50.0  # the sum falls as a grows
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if counts(mid).sum() > total else (low, mid)
    result = counts(high)
    result[0] += total - result.sum()
    return result, high


def generate(spec: TailSpec = TailSpec()) -> dict:
    """The corpus in memory: {"labels": [Label], "counts": target training counts,
    "exponent": a, "splits": {split: [(words, labels)]}, "vectors": {word: vector}}."""
    if spec.labels > spec.themes * spec.qualifiers:
        raise ValueError(f"{spec.labels} labels need more than {spec.themes} themes x "
                         f"{spec.qualifiers} qualifiers")
    rng = np.random.default_rng(spec.seed)
    themes, qualifiers = THEMES[: spec.themes], QUALIFIERS[: spec.qualifiers]
    pseudo = _pseudo_words(rng, spec.labels * spec.own_words + spec.themes * spec.theme_pool
                           + spec.noise_words)
    own_pool = pseudo[: spec.labels * spec.own_words]
    theme_pools = [pseudo[len(own_pool) + t * spec.theme_pool:][: spec.theme_pool]
                   for t in range(spec.themes)]
    noise = (*FILLER, *pseudo[len(own_pool) + spec.themes * spec.theme_pool:])

    pairs = sorted(rng.choice(spec.themes * spec.qualifiers, size=spec.labels, replace=False))
    labels = []
    for k, pair in enumerate(int(p) for p in pairs):
        t, q = divmod(pair, spec.qualifiers)
        own = own_pool[k * spec.own_words:][: spec.own_words]
        shared = tuple(theme_pools[t][i] for i in
                       rng.choice(spec.theme_pool, size=spec.theme_words, replace=False))
        labels.append(Label(f"{themes[t]}_{qualifiers[q]}",
                            f"{themes[t].capitalize()} {qualifiers[q]}",
                            t, q, (themes[t], qualifiers[q], *own, *shared)))

    sizes, size_probs = zip(*spec.set_sizes)
    train_sizes = rng.choice(sizes, size=spec.train_docs, p=size_probs)
    by_rank, exponent = power_law_counts(spec, int(train_sizes.sum()))
    counts = np.empty(spec.labels, dtype=int)
    counts[rng.permutation(spec.labels)] = by_rank

    members = [np.flatnonzero([x.theme == t for x in labels]) for t in range(spec.themes)]
    noise_p = 1.0 / np.arange(1, len(noise) + 1)
    noise_p /= noise_p.sum()
    quota = counts.astype(float)  # training documents draw from what is left of it
    splits = {}
    for split, n in (("train", spec.train_docs), ("valid", spec.valid_docs),
                     ("test", spec.test_docs)):
        docs = []
        for i in range(n):
            size = int(train_sizes[i]) if split == "train" else int(rng.choice(sizes, p=size_probs))
            weights = quota if split == "train" else counts.astype(float)
            chosen = _label_set(rng, size, weights, labels, members, spec.same_theme)
            if split == "train":
                quota[chosen] -= 1
            docs.append((_words(rng, chosen, labels, noise, noise_p, spec),
                         [labels[k].label for k in chosen]))
        splits[split] = docs
    return {"labels": labels, "counts": counts, "exponent": exponent, "splits": splits,
            "vectors": _vectors(rng, spec, labels, themes, qualifiers, theme_pools, noise)}


def write_tail_corpus(raw_dir: str | Path, spec: TailSpec = TailSpec()) -> dict:
    """Generate the corpus and write it to `raw_dir` (atomically, replacing any folder there).

    Returns what `generate` returned, less the documents and vectors."""
    corpus = generate(spec)
    with atomic_dir(Path(raw_dir)) as tmp:
        for split, docs in corpus["splits"].items():
            _write_lines(tmp / f"{split}_texts.txt", (" ".join(words) for words, _ in docs))
            _write_lines(tmp / f"{split}_labels.txt", (" ".join(ls) for _, ls in docs))
        _write_lines(tmp / "label_names.txt", (f"{x.label}\t{x.name}" for x in corpus["labels"]))
        _write_lines(tmp / VECTORS_FILE, (f"{word} {' '.join(f'{v:.4f}' for v in vector)}"
                                          for word, vector in corpus["vectors"].items()))
    return {k: v for k, v in corpus.items() if k not in ("splits", "vectors")}


def _pseudo_words(rng: np.random.Generator, n: int) -> list[str]:
    """n distinct pronounceable pseudo-words of three CV syllables, none an English word here."""
    syllables = [c + v for c, v in itertools.product(_CONSONANTS, _VOWELS)]
    space = len(syllables) ** 3
    if n > space:
        raise ValueError(f"{n} pseudo-words asked, {space} possible")
    taken = set(THEMES) | set(QUALIFIERS) | set(FILLER)
    words = []
    for code in rng.choice(space, size=n + 64, replace=False).tolist():
        a, rest = divmod(code, len(syllables) ** 2)
        b, c = divmod(rest, len(syllables))
        word = syllables[a] + syllables[b] + syllables[c]
        if word not in taken:
            words.append(word)
    if len(words) < n:  # cannot happen: three syllables never spell a word of the lists above
        raise RuntimeError("too few pseudo-words")
    return words[:n]


def _draw(rng: np.random.Generator, weights: np.ndarray) -> int:
    """An index drawn in proportion to non-negative `weights` (not all zero)."""
    cumulative = np.cumsum(weights)
    return int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))


def _label_set(rng: np.random.Generator, size: int, weights: np.ndarray, labels: list[Label],
               members: list[np.ndarray], same_theme: float) -> list[int]:
    """Up to `size` distinct label indices (fewer only when `weights` run out)."""
    weights = weights.copy()
    if weights.sum() <= 0:
        return []
    chosen = [_draw(rng, weights)]
    weights[chosen[0]] = 0
    kin = members[labels[chosen[0]].theme]
    while len(chosen) < size and weights.sum() > 0:
        if rng.random() < same_theme and weights[kin].sum() > 0:
            pick = int(kin[_draw(rng, weights[kin])])
        else:
            pick = _draw(rng, weights)
        chosen.append(pick)
        weights[pick] = 0
    return chosen


def _words(rng: np.random.Generator, chosen: list[int], labels: list[Label],
           noise: tuple[str, ...], noise_p: np.ndarray, spec: TailSpec) -> list[str]:
    length = int(rng.integers(spec.length[0], spec.length[1] + 1))
    words = [noise[i] for i in rng.choice(len(noise), size=length, p=noise_p)]
    for slot in np.flatnonzero(rng.random(length) < spec.stray).tolist():
        topics = labels[int(rng.integers(len(labels)))].topics
        words[slot] = topics[int(rng.integers(len(topics)))]
    n_topic = min(length, max(2 * len(chosen), round(spec.topic_share * length)))
    for k, slot in enumerate(rng.choice(length, size=n_topic, replace=False).tolist()):
        topics = labels[chosen[k % len(chosen)]].topics
        words[slot] = topics[int(rng.integers(len(topics)))]
    return words


def _unit(rng: np.random.Generator, dim: int) -> np.ndarray:
    v = rng.normal(size=dim)
    return v / np.linalg.norm(v)


def _vectors(rng: np.random.Generator, spec: TailSpec, labels: list[Label],
             themes: tuple[str, ...], qualifiers: tuple[str, ...],
             theme_pools: list[list[str]], noise: Iterable[str]) -> dict[str, np.ndarray]:
    d = spec.dim

    def near(direction: np.ndarray) -> np.ndarray:
        return direction + rng.normal(scale=0.15, size=d)

    theme_dirs = [_unit(rng, d) for _ in themes]
    qualifier_dirs = [_unit(rng, d) for _ in qualifiers]
    vectors: dict[str, np.ndarray] = {}
    for word, direction in (*zip(themes, theme_dirs), *zip(qualifiers, qualifier_dirs)):
        vectors[word] = near(3 * direction)
    for t, pool in enumerate(theme_pools):
        for word in pool:
            vectors[word] = near(3 * theme_dirs[t])
    for x in labels:
        mix = 0.6 * theme_dirs[x.theme] + 0.5 * qualifier_dirs[x.qualifier] + 0.6 * _unit(rng, d)
        direction = 3 * mix / np.linalg.norm(mix)
        for word in x.topics[2:2 + spec.own_words]:
            vectors[word] = near(direction)
    for word in noise:
        vectors.setdefault(word, rng.normal(scale=0.4, size=d))
    return vectors


def _write_lines(path: Path, lines: Iterable[str]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(line + "\n" for line in lines)


def describe(info: dict, spec: TailSpec) -> str:
    """One paragraph on the generated label distribution, for logs."""
    counts = np.sort(info["counts"])[::-1]
    tail = float(np.mean((counts >= 2) & (counts <= 5)))
    return (f"{spec.labels} labels, training counts {counts[0]} (head) .. {counts[-1]} "
            f"(median {int(np.median(counts))}), power-law exponent {info['exponent']:.3f}; "
            f"{tail:.0%} of labels have 2-5 training documents, {int((counts >= 100).sum())} "
            f"have 100 or more; {spec.train_docs} train / {spec.valid_docs} valid / "
            f"{spec.test_docs} test documents of {spec.length[0]}-{spec.length[1]} words, "
            f"mean label set {sum(s * p for s, p in spec.set_sizes):.2f}")


if __name__ == "__main__":  # python benchmarks/tail_corpus.py OUT_DIR: write the default corpus
    import sys

    target = Path(sys.argv[1] if len(sys.argv) > 1 else "data/bench-tail/raw")
    info = write_tail_corpus(target)
    print(f"wrote {target}: {describe(info, TailSpec())}")
