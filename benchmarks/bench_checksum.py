"""What the checksum of a tensor file costs: writing (hashed while streaming) and loading
(`tensorfile.verify_checksum`, one read of the file), on a 1.6 GiB file.

    PYTHONPATH=. python benchmarks/bench_checksum.py [FILE] [--gib 1.6] [--repeats 2]

FILE (default: a temporary file) is written and deleted. Old/new are interleaved in each
repeat, so compare them as ratios within one run.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xmtc_cli import tensorfile


class _NoHash:
    def update(self, data) -> None:
        return None

    def hexdigest(self) -> str:
        return "0" * 64


def _timed(work) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file", nargs="?", type=Path)
    parser.add_argument("--gib", type=float, default=1.6)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    path = args.file or Path(tempfile.mkdtemp()) / "big.safetensors"
    n = int(args.gib * (1 << 30)) // 4 // 8
    tensors = {f"t{i}": torch.randn(n) for i in range(8)}  # 8 float32 tensors
    try:
        for repeat in range(args.repeats):
            tensorfile.hashlib.sha256 = lambda *a: _NoHash()  # the writer without hashing
            plain = _timed(lambda: tensorfile.write_safetensors(path, tensors))
            tensorfile.hashlib.sha256 = hashlib.sha256
            hashed = _timed(lambda: tensorfile.write_safetensors(path, tensors))
            load = _timed(lambda: [t.sum() for t in load_file(str(path)).values()])
            verify = _timed(lambda: tensorfile.verify_checksum(path))
            size = path.stat().st_size
            print(f"repeat {repeat}: {size / (1 << 30):.2f} GiB; write {plain:.2f} s without the "
                  f"hash, {hashed:.2f} s with it; load_file + read every value {load:.2f} s; "
                  f"verify_checksum {verify:.2f} s ({size / verify / 1e9:.2f} GB/s)", flush=True)
    finally:
        path.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
