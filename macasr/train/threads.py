"""How many threads torch computes with while DataLoader workers share the CPU."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def threads_beside_workers(num_workers: int) -> Iterator[None]:
    """Let torch use only the cores the DataLoader workers leave free, then restore its setting.

    torch's default of one thread per core plus workers featurizing on those cores oversubscribes
    them: on 2 cores with one worker, 300 demo steps took 75 s against 69 s on a quiet machine,
    and under other load a step cost 4.5x the CPU time of a one-thread step (threads spin waiting
    for each other); a user measured 7 against 178 audio s/s. Only for CPU training."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    before = torch.get_num_threads()
    torch.set_num_threads(min(before, max(1, cpus - num_workers)))
    try:
        yield
    finally:
        torch.set_num_threads(before)
