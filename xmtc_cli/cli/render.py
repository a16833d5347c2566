"""Rendering shared by the commands: metric tables and the training progress display."""

from __future__ import annotations

import sys
import time
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
    from xmtc_cli.run import EpochReport
    from xmtc_cli.training import RunInfo

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


_RANKED = [("p", "P"), ("ndcg", "nDCG"), ("psp", "PSP"), ("psndcg", "PSnDCG")]


def metrics_table(metrics: dict, title: str | None = None) -> Table:
    """Metrics as percentages, in the order the paper reports them."""
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("%", justify="right")
    rows = dict(METRIC_ROWS)
    for key in metrics:  # the ranking metrics of other k (`xmtc eval --k`)
        name, _, k = key.partition("@")
        if k and key not in rows:
            rows[key] = f"{dict(_RANKED).get(name, name)}@{k}"
    order = [key for key, _ in METRIC_ROWS if key in metrics and "@" not in key]
    for name, _ in _RANKED:
        order += sorted((key for key in metrics if key.startswith(name + "@")),
                        key=lambda key: int(key.partition("@")[2]))
    for key in order:
        table.add_row(rows[key], f"{100 * metrics[key]:.2f}")
    if "documents" in metrics:
        table.add_row("documents", f"{metrics['documents']:,}")
    return table


class TrainingDisplay:
    """Training progress on stderr: a live bar on a terminal; otherwise (a log file, a
    scheduler, `nohup`) a plain line every `log_every` seconds and one per epoch."""

    def __init__(self, live: bool | None = None, clock=time.monotonic) -> None:
        self.live = stderr.is_terminal if live is None else live
        self.clock = clock
        self.progress: Progress | None = None
        self.task = None
        self.info: RunInfo | None = None
        self.started = self.last_line = self.epoch_started = 0.0
        self.epoch_docs = 0
        self.loss: float | None = None

    def on_start(self, info: RunInfo) -> None:
        self.info = info
        self.started = self.last_line = self.epoch_started = self.clock()
        resumed = ""
        if info.start_epoch > 1 or info.start_batch:
            resumed = f", resuming at epoch {info.start_epoch} step {info.start_batch + 1}"
        stderr.print(
            f"training on {info.device}: {info.train_docs:,} documents, {info.valid_docs:,} "
            f"for validation, {info.parameters / 1e6:.2f} M parameters -> {info.run_dir}"
            + resumed
        )
        if info.threads:
            stderr.print(f"CPU threads: {info.threads}")
        if info.precision:
            stderr.print(f"precision: {info.precision}")
        if self.live:
            self.progress = Progress(
                TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"), BarColumn(),
                MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
                TextColumn("{task.fields[rate]} docs/s"), TimeElapsedColumn(),
                TimeRemainingColumn(), console=stderr, transient=False,
            )
            self.progress.start()

    def on_step(self, epoch: int, step: int, docs: int, loss: float | None) -> None:
        if self.info is None:
            return
        now = self.clock()
        if self.task is None or self.task[0] != epoch:
            self.epoch_docs = 0  # the epoch's clock started at on_start or the last epoch's end
            self._new_bar(epoch, step - 1)
        self.epoch_docs += docs
        if loss is not None:
            self.loss = loss
        rate = self.epoch_docs / (now - self.epoch_started) if now > self.epoch_started else None
        if self.progress is not None:
            fields = {"loss": f"{loss:.4f}"} if loss is not None else {}
            if rate:
                fields["rate"] = f"{rate:,.0f}"
            self.progress.update(self.task[1], completed=step, **fields)
        elif now - self.last_line >= self.info.log_every:
            self.last_line = now
            total = self.info.steps_per_epoch
            eta = ""
            if rate:
                batch_rate = rate / max(docs, 1)
                eta = f", epoch ETA {_duration((total - step) / batch_rate)}"
            loss_text = f" loss {self.loss:.4f}" if self.loss is not None else ""
            _line(f"epoch {epoch}/{self.info.epochs} step {step:,}/{total:,}{loss_text}, "
                  f"{rate or 0:,.1f} docs/s, elapsed {_duration(now - self.started)}{eta}")

    def on_notice(self, text: str) -> None:
        """A line about the run that is not progress (a new thread count)."""
        if self.progress is not None:
            self.progress.console.print(text)
        else:
            _line(text)

    def on_validate(self, done: int, total: int) -> None:
        now = self.clock()
        if self.progress is None and self.info is not None and (
                now - self.last_line >= self.info.log_every):
            self.last_line = now
            _line(f"validating: {done:,}/{total:,} documents, "
                  f"elapsed {_duration(now - self.started)}")

    def on_epoch_end(self, report: EpochReport) -> None:
        line = epoch_line(report, self.info.epochs if self.info else report.epoch)
        if self.progress is not None:
            self.progress.console.print(line)
        else:
            _line(line)
        self.last_line = self.epoch_started = self.clock()

    def _new_bar(self, epoch: int, done: int) -> None:
        if self.progress is None:
            self.task = (epoch, None)
            return
        if self.task is not None:
            self.progress.remove_task(self.task[1])
        task = self.progress.add_task(
            "train", total=self.info.steps_per_epoch, completed=done, epoch=epoch,
            epochs=self.info.epochs, loss="…", rate="…",
        )
        self.task = (epoch, task)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def _line(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    """4s, 3m05s, 2h07m: short and unambiguous in a log line."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def epoch_line(report: EpochReport, epochs: int) -> str:
    parts = " ".join(f"{k} {v:.4f}" for k, v in report.loss_parts.items())
    valid = ""
    if report.valid:
        v = report.valid
        valid = (f" | valid micro-F1 {100 * v['micro_f1']:.2f} "
                 f"(P {100 * v['micro_precision']:.2f} R {100 * v['micro_recall']:.2f})")
        if "lexical_weight" in v:
            valid += f" lexical weight {v['lexical_weight']:g}"
    best = " *" if report.best else ""
    if report.partial:
        best += f" (stopped at train.max_steps={report.steps})"
    return (f"epoch {report.epoch}/{epochs} loss {report.train_loss:.4f}"
            f"{' (' + parts + ')' if parts else ''}{valid}{best} "
            f"[{report.seconds:.1f}s, {report.docs_per_second:,.0f} docs/s, lr {report.lr:.2e}]")
