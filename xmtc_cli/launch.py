"""This process's place among torchrun's processes, read from the environment once.

torchrun tells each process where it stands in environment variables; `Launch.from_environ` is
the one reader of them (nanoGPT's `ddp`/`master_process` block, torchtune's `_is_rank_zero`),
and everything else is handed the `Launch`: `xmtc train` (which process draws progress, which
folder a restart continues), `distributed.setup` (the process group and the device) and
`training.fit` (whether a restart resumes by itself). Kept free of torch, so that the command
line can read it before importing torch.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Launch:
    """Where this process stands: one process of its own, or a rank of a torchrun launch."""

    by_torchrun: bool = False
    """Started by torchrun (or another launcher that sets WORLD_SIZE)."""
    world_size: int = 1
    """WORLD_SIZE: the processes training together, on all machines."""
    rank: int = 0
    """RANK: this process's index among them; rank 0 writes the run folder."""
    local_rank: int = 0
    """LOCAL_RANK: its index on this machine, and so its GPU."""
    local_world_size: int = 1
    """LOCAL_WORLD_SIZE: the processes of the launch on this machine (they share its cores:
    xmtc_cli.threads)."""
    restarts: int = 0
    """TORCHELASTIC_RESTART_COUNT: how often torchrun has started the group again after a
    failure (0 on the first start)."""
    launch_id: str | None = None
    """What tells this torchrun launch from others, the same across its restarts: torchrun's
    run id (a fresh uuid per single-node launch, --rdzv-id on many nodes); where that is the
    default "none", the host and the agent's pid. None outside torchrun."""

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes the run folder and shows progress."""
        return self.rank == 0

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> Launch:
        """The launch torchrun describes in `environ`; one process of its own without it."""
        run_id = environ.get("TORCHELASTIC_RUN_ID")
        if run_id is not None and (not run_id or run_id == "none"):
            run_id = f"{socket.gethostname()}:{os.getppid()}"
        return cls(
            by_torchrun="WORLD_SIZE" in environ,
            world_size=int(environ.get("WORLD_SIZE", "1") or 1),
            rank=int(environ.get("RANK", "0") or 0),
            local_rank=int(environ.get("LOCAL_RANK", "0") or 0),
            local_world_size=max(1, int(environ.get("LOCAL_WORLD_SIZE", "1") or 1)),
            restarts=int(environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0),
            launch_id=run_id,
        )
