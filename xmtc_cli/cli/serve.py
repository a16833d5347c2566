"""`xmtc serve`: keep a checkpoint loaded and answer suggestion requests over HTTP."""

from __future__ import annotations

import os
import signal
import sys
from typing import Annotated

import typer

from xmtc_cli.cli.app import app
from xmtc_cli.cli.options import (
    CheckpointArgument,
    Device,
    DeviceOption,
    ThreadsOption,
    cpu_watch,
    resolve_threshold,
    threshold_value,
)
from xmtc_cli.cli.render import stderr
from xmtc_cli.errors import UsageError, XmtcError


@app.command()
def serve(
    checkpoint: CheckpointArgument,
    host: Annotated[str, typer.Option(
        help="Address to listen on. The default answers this machine only; the API has no "
        "authentication, so put anything wider behind a proxy that has.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(
        min=0, max=65535, help="Port to listen on (0: any free port, printed).")] = 8000,
    top_k: Annotated[int, typer.Option(
        "--top-k", min=0, help="Suggestions beyond the set when a request gives no top_k.")] = 10,
    threshold: Annotated[str | None, typer.Option(
        "--threshold", help="Default set cut: a number in (0, 1] or `tuned` (as predict).",
    )] = None,
    max_body: Annotated[int, typer.Option(
        "--max-body", min=1, help="Largest request body read, in bytes.")] = 1_000_000,
    timeout: Annotated[float, typer.Option(
        "--timeout", min=0.1, help="Seconds a client may take for each read of its request.",
    )] = 10.0,
    device: DeviceOption = Device.auto,
    threads: ThreadsOption = None,
) -> None:
    """Serve ranked suggestions: POST /suggest {"text": ..., "top_k": K}; GET /health."""
    from xmtc_cli.threads import apply_threads, choose_before_torch

    choice = choose_before_torch(threads)  # requests share the process's torch threads
    from xmtc_cli.inference import Predictor
    from xmtc_cli.server import LOOPBACK, SuggestServer, SuggestService

    apply_threads(choice)
    watch = cpu_watch(choice, device.value)

    explicit = threshold_value(threshold)
    predictor = Predictor.from_checkpoint(str(checkpoint), device.value)
    cut = resolve_threshold(predictor, explicit, threshold, checkpoint)
    if top_k > len(predictor.labels):
        raise UsageError(f"--top-k {top_k} is more than the model's {len(predictor.labels)} "
                         "labels", f"give at most --top-k {len(predictor.labels)}")
    try:
        service = SuggestService(predictor, top_k, 0.0, cut, watch, stderr.print)
        server = SuggestServer(service, host, port, max_body, timeout)
    except OSError as exc:
        raise XmtcError(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                        "choose another --port (0 picks a free one), or stop what uses it"
                        ) from None
    if host not in LOOPBACK:
        stderr.print(f"warning: listening on {host}: any machine that reaches it can use the "
                     "model (there is no authentication)")
    stderr.print(f"serving {checkpoint} on {server.url} (POST /suggest, GET /health); "
                 f"CPU threads: {choice.describe()}; Ctrl-C stops")

    def stop(signum, frame):  # SIGTERM: stop as Ctrl-C does
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    service.watch_load()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        stderr.print("stopped")
    finally:
        service.stop()
        signal.signal(signal.SIGTERM, previous)
        server.server_close()
    # Stopped cleanly, and serving writes no file: end here rather than in the interpreter's
    # teardown. The requests ran torch in the server's own threads, and with more than one
    # CPU thread torch's thread pools were sometimes torn down while still running: 3 of 30
    # stops with --threads 2 aborted ("terminate called without an active exception",
    # SIGABRT) after "stopped".
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
