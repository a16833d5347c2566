"""Option types that more than one command takes, so that each is spelled and documented once."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer


class Device(str, Enum):
    """Where a model runs: `auto` is CUDA when there is a GPU, else the CPU."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


DeviceOption = Annotated[Device, typer.Option(
    help="Where to run the model: auto (a GPU when there is one), cpu or cuda.")]
BatchSizeOption = Annotated[int, typer.Option(min=1, help="Documents per forward pass.")]
EncodingOption = Annotated[str, typer.Option(
    "--encoding", help="Encoding of the input text, e.g. latin-1 or utf-16 (a byte-order mark "
    "is always dropped).")]
ThreadsOption = Annotated[int | None, typer.Option(
    min=1, max=1024, help="CPU threads for torch. Default: the recipe's train.threads, else "
    "XMTC_THREADS or OMP_NUM_THREADS, else the cores this process may use less the busy "
    "ones (shared among torchrun's processes).")]
