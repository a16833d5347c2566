"""Learning curves: metrics.jsonl as a CSV table, and as a picture (`xmtc plot RUN`).

`curves.csv` sits beside `metrics.jsonl` and is rewritten from it after every epoch: one row
per epoch, with the columns `epoch steps train_loss loss_<part>... valid_<metric>... lr seconds
docs_per_second best partial` (a value a line lacks is empty). The picture is an SVG written
with the standard library, two panels sharing the epoch axis: the training loss (and its
parts), and the validation micro-F1, macro-F1 and P@1, the best epoch marked. A PNG needs
matplotlib (`pip install "xmtc[plot]"`).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from xml.sax.saxutils import escape

from xmtc_cli.atomic import atomic_file, atomic_write_text
from xmtc_cli.errors import DataError, UsageError, at

METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.csv"
VALID_SHOWN = ("micro_f1", "macro_f1", "p@1")


def read_metrics(run: Path) -> list[dict]:
    path = run / METRICS_FILE
    if not path.is_file():
        raise DataError(f"{run} has no {METRICS_FILE}",
                        "give a run folder written by `xmtc train` (after its first epoch)")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict) or not isinstance(row.get("epoch"), int):
            raise DataError(f"{at(path, number)}: not a metrics line of `xmtc train`",
                            "the file is damaged; training rewrites it after every epoch")
        rows.append(row)
    if not rows:
        raise DataError(f"{path} holds no epoch yet", "plot once an epoch has finished")
    return rows


def table(rows: list[dict]) -> tuple[list[str], list[list]]:
    """(header, one row per epoch) of curves.csv."""
    parts = list(dict.fromkeys(k for r in rows for k in (r.get("loss_parts") or {})))
    valid = list(dict.fromkeys(k for r in rows for k in (r.get("valid") or {})))
    header = (["epoch", "steps", "train_loss"] + [f"loss_{p}" for p in parts]
              + [f"valid_{m}" for m in valid] + ["lr", "seconds", "docs_per_second", "best",
                                                 "partial"])
    out = []
    for r in rows:
        loss_parts, metrics = r.get("loss_parts") or {}, r.get("valid") or {}
        out.append([r["epoch"], r.get("steps", ""), r.get("train_loss", "")]
                   + [loss_parts.get(p, "") for p in parts] + [metrics.get(m, "") for m in valid]
                   + [r.get("lr", ""), r.get("seconds", ""), r.get("docs_per_second", ""),
                      str(bool(r.get("best"))).lower(), str(bool(r.get("partial"))).lower()])
    return header, out


def write_csv(run: Path) -> Path:
    """Rewrite RUN/curves.csv from RUN/metrics.jsonl (atomically)."""
    header, rows = table(read_metrics(run))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(run / CURVES_FILE, buffer.getvalue())
    return run / CURVES_FILE


def plot(run: Path, out: Path) -> Path:
    """The learning curves of RUN as `out` (.svg with the standard library, .png with
    matplotlib)."""
    rows = read_metrics(run)
    suffix = out.suffix.lower()
    if suffix == ".png":
        _png(rows, out, run)
    elif suffix == ".svg":
        atomic_write_text(out, svg(rows, str(run)))
    else:
        raise UsageError(f"--out {out}: the picture is written as .svg or .png",
                         "name the file e.g. curves.svg")
    return out


def _series(rows: list[dict]) -> tuple[list[tuple[str, list]], list[tuple[str, list]], int | None]:
    epochs = [r["epoch"] for r in rows]
    losses = [("train loss", list(zip(epochs, [r.get("train_loss") for r in rows])))]
    for part in dict.fromkeys(k for r in rows for k in (r.get("loss_parts") or {})):
        losses.append((f"  {part}", list(zip(epochs, [(r.get("loss_parts") or {}).get(part)
                                                      for r in rows]))))
    valid = []
    for key in VALID_SHOWN:
        points = list(zip(epochs, [(r.get("valid") or {}).get(key) for r in rows]))
        if any(v is not None for _, v in points):
            valid.append((f"valid {key}", points))
    best = [r["epoch"] for r in rows if r.get("best")]
    return losses, valid, best[-1] if best else None


COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")


def svg(rows: list[dict], title: str) -> str:
    """The picture as SVG text: two panels, loss above, validation metrics below."""
    losses, valid, best = _series(rows)
    width, panel, left, top = 720, 230, 70, 40
    epochs = [r["epoch"] for r in rows]
    lo, hi = min(epochs), max(epochs)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" '
             f'height="{top + 2 * panel + 80}" font-family="sans-serif" font-size="12">',
             '<rect width="100%" height="100%" fill="white"/>',
             f'<text x="{left}" y="22" font-size="14">learning curves: {escape(title)}</text>']
    for i, (name, series, percent) in enumerate((("training loss", losses, False),
                                                 ("validation (%)", valid, True))):
        y0 = top + i * (panel + 30)
        parts += _panel(series, name, left, y0, width - left - 170, panel - 30, lo, hi, best,
                        percent)
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _panel(series, name, x0, y0, w, h, lo, hi, best, percent) -> list[str]:
    values = [v for _, points in series for _, v in points if _finite(v)]
    out = [f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#999"/>',
           f'<text x="{x0}" y="{y0 - 6}">{escape(name)}</text>']
    if not values:
        out.append(f'<text x="{x0 + 10}" y="{y0 + h / 2}">no values</text>')
        return out
    vmin, vmax = min(values), max(values)
    if percent:
        vmin, vmax = 100 * vmin, 100 * vmax
    if vmax - vmin < 1e-12:
        vmin, vmax = vmin - 1, vmax + 1
    span = max(hi - lo, 1)

    def xy(epoch, value):
        value = 100 * value if percent else value
        return (x0 + (epoch - lo) / span * w, y0 + h - (value - vmin) / (vmax - vmin) * h)

    for frac in (0, 0.5, 1):
        value = vmin + frac * (vmax - vmin)
        y = y0 + h - frac * h
        out.append(f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end">{value:.3g}</text>')
    for epoch in sorted({lo, hi, (lo + hi) // 2}):
        x = x0 + (epoch - lo) / span * w
        out.append(f'<text x="{x:.1f}" y="{y0 + h + 15}" text-anchor="middle">{epoch}</text>')
    if best is not None:
        x = x0 + (best - lo) / span * w
        out.append(f'<line x1="{x:.1f}" y1="{y0}" x2="{x:.1f}" y2="{y0 + h}" stroke="#bbb" '
                   'stroke-dasharray="4 3"/>')
        out.append(f'<text x="{x + 3:.1f}" y="{y0 + 12}" fill="#888">best</text>')
    for i, (label, points) in enumerate(series):
        colour = COLOURS[i % len(COLOURS)]
        coords = [xy(e, v) for e, v in points if _finite(v)]
        if len(coords) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
            out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" '
                       'stroke-width="2"/>')
        out += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"/>' for x, y in coords]
        out.append(f'<text x="{x0 + w + 12}" y="{y0 + 14 + 16 * i}" fill="{colour}">'
                   f"{escape(label.strip())}</text>")
    return out


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _png(rows: list[dict], out: Path, run: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("a PNG needs matplotlib, which is not installed",
                         'pip install "xmtc[plot]", or write an SVG: --out curves.svg') from None
    losses, valid, best = _series(rows)
    fig, axes = plt.subplots(2, 1, sharex=True, figsize=(8, 6))
    for ax, series, percent, name in ((axes[0], losses, False, "training loss"),
                                      (axes[1], valid, True, "validation (%)")):
        for label, points in series:
            xs = [e for e, v in points if _finite(v)]
            ys = [(100 * v if percent else v) for _, v in points if _finite(v)]
            ax.plot(xs, ys, marker="o", label=label.strip())
        if best is not None:
            ax.axvline(best, color="#bbb", linestyle="--")
        ax.set_ylabel(name)
        ax.legend(loc="best", fontsize=8)
    axes[1].set_xlabel("epoch")
    fig.suptitle(f"learning curves: {run}")
    with atomic_file(out, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
