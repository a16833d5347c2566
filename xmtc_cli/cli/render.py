"""Rendering shared by the commands: metric tables and the training progress display."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

if TYPE_CHECKING:  # importing training pulls in torch: not for `xmtc --help` or preprocess
    from xmtc_cli.training import EpochReport, RunInfo

# No markup (paths may hold brackets) and no hard wrapping at the console width (80 columns when
# piped), which would break long paths in logs and long values in `--dry-run` YAML.
stdout = Console(highlight=False, markup=False, soft_wrap=True)
stderr = Console(stderr=True, highlight=False, markup=False, soft_wrap=True)

METRIC_ROWS = [
    ("micro_precision", "micro precision"), ("micro_recall", "micro recall"),
    ("micro_f1", "micro F1"), ("macro_f1", "macro F1"),
    ("macro_f1_all_labels", "macro F1 (all labels)"), ("weighted_f1", "weighted F1"),
    ("example_f1", "example-based F1"), ("p@1", "P@1"), ("p@3", "P@3"), ("p@5", "P@5"),
    ("ndcg@1", "nDCG@1"), ("ndcg@3", "nDCG@3"), ("ndcg@5", "nDCG@5"),
    ("psp@1", "PSP@1"), ("psp@3", "PSP@3"), ("psp@5", "PSP@5"),
    ("psndcg@1", "PSnDCG@1"), ("psndcg@3", "PSnDCG@3"), ("psndcg@5", "PSnDCG@5"),
]


def metrics_table(metrics: dict, title: str | None = None) -> Table:
    """Metrics as percentages, in the order the paper reports them."""
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("%", justify="right")
    for key, label in METRIC_ROWS:
        if key in metrics:
            table.add_row(label, f"{100 * metrics[key]:.2f}")
    if "documents" in metrics:
        table.add_row("documents", f"{metrics['documents']:,}")
    return table


class TrainingDisplay:
    """Training progress on stderr: a live bar on a terminal, one plain line per epoch otherwise."""

    def __init__(self) -> None:
        self.live = stderr.is_terminal
        self.progress: Progress | None = None
        self.task = None
        self.info: RunInfo | None = None

    def on_start(self, info: RunInfo) -> None:
        self.info = info
        stderr.print(
            f"training on {info.device}: {info.train_docs:,} documents, {info.valid_docs:,} "
            f"for validation, {info.parameters / 1e6:.2f} M parameters -> {info.run_dir}"
        )
        if self.live:
            self.progress = Progress(
                TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"), BarColumn(),
                MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
                TextColumn("{task.fields[rate]} docs/s"), TimeElapsedColumn(),
                TimeRemainingColumn(), console=stderr, transient=False,
            )
            self.progress.start()

    def on_step(self, epoch: int, step: int, docs: int, loss: float | None) -> None:
        if self.progress is None or self.info is None:
            return
        if self.task is None or step == 1:
            if self.task is not None:
                self.progress.remove_task(self.task)
            self.task = self.progress.add_task(
                "train", total=self.info.steps_per_epoch, epoch=epoch, epochs=self.info.epochs,
                loss="…", rate="…",
            )
        task = self.progress.tasks[-1]
        fields = {}
        if loss is not None:
            fields["loss"] = f"{loss:.4f}"
        if task.elapsed:
            fields["rate"] = f"{(step * docs) / task.elapsed:,.0f}"
        self.progress.update(self.task, completed=step, **fields)

    def on_epoch_end(self, report: EpochReport) -> None:
        line = epoch_line(report, self.info.epochs if self.info else report.epoch)
        if self.progress is not None:
            self.progress.console.print(line)
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def epoch_line(report: EpochReport, epochs: int) -> str:
    parts = " ".join(f"{k} {v:.4f}" for k, v in report.loss_parts.items())
    valid = ""
    if report.valid:
        v = report.valid
        valid = (f" | valid micro-F1 {100 * v['micro_f1']:.2f} "
                 f"(P {100 * v['micro_precision']:.2f} R {100 * v['micro_recall']:.2f})")
    best = " *" if report.best else ""
    return (f"epoch {report.epoch}/{epochs} loss {report.train_loss:.4f}"
            f"{' (' + parts + ')' if parts else ''}{valid}{best} "
            f"[{report.seconds:.1f}s, {report.docs_per_second:,.0f} docs/s, lr {report.lr:.2e}]")
