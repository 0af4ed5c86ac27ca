"""Process-group facts. The only module that reads torchrun's rank/world-size variables.

Single-process runs see rank 0 of 1; the DDP engine builds on these helpers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current_world() -> World:
    """The rank layout torchrun set up (RANK, LOCAL_RANK, WORLD_SIZE), or a single process."""
    return World(
        rank=int(os.environ.get("RANK", 0)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        size=int(os.environ.get("WORLD_SIZE", 1)),
    )
