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
        """The launch torchrun describes in `environ`; one process of its own without it.

        A launch of many is recognised only when it is complete and consistent: WORLD_SIZE
        above 1 with RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT all set, RANK below
        WORLD_SIZE, the port a port. Every variable that is set must be well-formed, whatever
        the rest says. Anything else is a UsageError naming the variables, so that torchrun's
        variables left in a shell never make a plain `xmtc train` wait for processes that will
        not come.
        """
        from xmtc_cli.errors import UsageError

        world = count_variable("WORLD_SIZE", least=1, environ=environ)
        rank = count_variable("RANK", environ=environ)
        local_rank = count_variable("LOCAL_RANK", environ=environ)
        restarts = count_variable("TORCHELASTIC_RESTART_COUNT", environ=environ) or 0
        port = count_variable("MASTER_PORT", environ=environ)
        local_world = count_variable("LOCAL_WORLD_SIZE", least=1, environ=environ)
        hint = ("unset them if they are left over in your shell (unset "
                + " ".join(LAUNCH_VARIABLES)
                + "), or start the processes with torchrun or `xmtc train --nproc K`")
        run_id = environ.get("TORCHELASTIC_RUN_ID")
        if run_id is not None and (not run_id or run_id == "none"):
            run_id = f"{socket.gethostname()}:{os.getppid()}"
        if world is None or world == 1:
            stray = [f"{n}={environ[n]}" for n in ("RANK", "LOCAL_RANK")
                     if environ.get(n, "0").strip() not in ("0", "")]
            if stray:
                raise UsageError(f"{', '.join(stray)} is set, but WORLD_SIZE "
                                 f"{'is not' if world is None else 'is 1'}: a process of a "
                                 "launch of many, or one process alone?", hint)
            return cls(by_torchrun=world is not None, restarts=restarts, launch_id=run_id)
        missing = [n for n in LAUNCH_VARIABLES if not environ.get(n, "").strip()]
        if missing:
            raise UsageError(f"WORLD_SIZE={world} asks for a launch of many processes, but "
                             f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not "
                             "set", hint)
        assert rank is not None and local_rank is not None and port is not None
        problems = []
        if rank >= world:
            problems.append(f"RANK={rank} is not below WORLD_SIZE={world}")
        if not 1 <= port <= 65535:
            problems.append(f"MASTER_PORT={port} is not a port (1 to 65535)")
        if local_world is not None and (local_world > world or local_rank >= local_world):
            problems.append(f"LOCAL_RANK={local_rank} and LOCAL_WORLD_SIZE={local_world} do "
                            f"not fit WORLD_SIZE={world}")
        elif local_rank > rank:
            problems.append(f"LOCAL_RANK={local_rank} is above RANK={rank}")
        if problems:
            raise UsageError("torchrun's variables disagree: " + "; ".join(problems), hint)
        return cls(by_torchrun=True, world_size=world, rank=rank, local_rank=local_rank,
                   local_world_size=local_world or 1, restarts=restarts, launch_id=run_id)


LAUNCH_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
"""What a launch of many processes must set, all of them: torchrun does."""


def count_variable(name: str, least: int = 0,
                   environ: Mapping[str, str] = os.environ, most: int = 999_999_999,
                   why: str = " (torchrun sets it for the processes it starts)",
                   fix: str = "or start xmtc with torchrun") -> int | None:
    """The environment variable `name` as a decimal integer (ASCII digits alone) from `least` to
    `most`; None where unset; a UsageError naming it where it is anything else (malformed
    values are usage errors). `why` and `fix` say where such a variable comes from."""
    from xmtc_cli.errors import UsageError

    value = environ.get(name)
    if value is None:
        return None
    text = value.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 9 or not least <= int(text) <= most:
        shown = value if len(value) <= 20 else value[:17] + "..."
        bounds = (f" from {least} to {most}" if most < 999_999_999
                  else f" of at least {least}" if least else "")
        raise UsageError(f"environment variable {name}={shown!r} is not a whole number"
                         + bounds + why, f"unset {name} (it may be left over in your shell), {fix}")
    return int(text)
