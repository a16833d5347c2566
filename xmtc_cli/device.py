"""Choosing the compute device and the mixed-precision context."""

from __future__ import annotations

import contextlib

import torch

from xmtc_cli.errors import XmtcError


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA when present, else the CPU; `cuda` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise XmtcError(
            f"--device {name} was asked for, but torch sees no CUDA device",
            "use --device cpu, or install a CUDA build of torch",
        )
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise XmtcError(f"unknown device {name!r}", "use auto, cpu or cuda") from exc


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 products natively: x86 with AVX-512 BF16 or AMX, and
    oneDNN, which runs torch's bf16 products on the CPU, in this torch. Elsewhere they are
    emulated and slower than float32 (oneDNN's own "bf16 support" counts plain AVX-512)."""
    try:
        return bool(torch.backends.mkldnn.is_available()
                    and (torch.cpu._is_avx512_bf16_supported()
                         or torch.cpu._is_amx_tile_supported()))
    except (AttributeError, RuntimeError):  # a torch without these queries
        return False


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when `enabled`; full precision on the CPU, where it is faster."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
