"""Process groups: the only module that reads torchrun's rank variables (RANK, LOCAL_RANK, WORLD_SIZE).

A single process is rank 0 of 1 and every helper here is then a no-op that returns its input,
so the engine calls them unconditionally. Under torchrun (or `macasr train --nproc N`, which
starts torchrun's launcher) `init_distributed` joins the process group: NCCL on CUDA (each rank
on GPU LOCAL_RANK), gloo on CPU.

A rank that dies never leaves the others hanging: torchrun's agent stops the other workers of
a job as soon as one exits with an error, and where no agent watches (a SLURM `srun` per rank),
every collective of the others fails once `[train] distributed_timeout_s` has passed (gloo
raises; NCCL's watchdog ends the process, its default TORCH_NCCL_ASYNC_ERROR_HANDLING); the
failing rank prints its own error, whatever its rank.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from macasr.errors import MacasrError

T = TypeVar("T")
DEFAULT_TIMEOUT_S = 1800  # seconds a collective waits for the other ranks (torch's own default)


class RankLost(MacasrError):
    """A collective failed: another rank stopped, or did not answer within the timeout."""


@dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def current_world() -> World:
    """The rank layout torchrun set up (RANK, LOCAL_RANK, WORLD_SIZE), or a single process."""
    return World(
        rank=int(os.environ.get("RANK", 0)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        size=int(os.environ.get("WORLD_SIZE", 1)),
    )


def init_distributed(device_kind: str, timeout_s: int = DEFAULT_TIMEOUT_S) -> World:
    """Join torchrun's process group (a no-op for one process) → this process's `World`.

    `device_kind` is the configured device's type ("cuda", "cpu", ...): NCCL and GPU LOCAL_RANK
    on CUDA, gloo elsewhere. Collectives fail after `timeout_s` seconds without the other ranks.
    MacasrError when torch has no distributed support or a GPU per local rank is missing."""
    world = current_world()
    if not world.distributed:
        return world
    if not dist.is_available():
        raise MacasrError(f"rank {world.rank} of {world.size}: this torch {torch.__version__} has no "
                          "torch.distributed support; install a build with it or train in one process")
    if dist.is_initialized():
        return world
    timeout = timedelta(seconds=timeout_s)
    try:
        if device_kind == "cuda":
            if world.local_rank >= torch.cuda.device_count():
                raise MacasrError(f"rank {world.rank} of {world.size}: local rank {world.local_rank} needs GPU "
                                  f"{world.local_rank}, but {torch.cuda.device_count()} are visible; start at most that "
                                  "many processes per node")
            torch.cuda.set_device(world.local_rank)
            dist.init_process_group("nccl", timeout=timeout, device_id=torch.device("cuda", world.local_rank))
        else:
            dist.init_process_group("gloo", timeout=timeout)
    except (ValueError, RuntimeError) as e:  # no rendezvous variables; the other ranks never came (DistStoreError)
        reason = " ".join(str(e).split())[:300]
        raise MacasrError(f"rank {world.rank} of {world.size} (WORLD_SIZE is set): cannot join the other ranks: {reason}; "
                          "start every rank with torchrun (or `macasr train --nproc N`)") from None
    return world


def rank_device(device: torch.device, world: World) -> torch.device:
    """The device a rank trains on: GPU LOCAL_RANK when the configured device is CUDA and there are
    several ranks (a config's `cuda` or `auto` means every GPU of the node, one per rank)."""
    if world.distributed and device.type == "cuda":
        return torch.device("cuda", world.local_rank)
    return device


def teardown() -> None:
    """Leave the process group (after a run, failed or not); a no-op without one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _active(world: World) -> bool:
    return world.distributed and dist.is_available() and dist.is_initialized()


def peer_lost(error: BaseException) -> bool:
    """Whether `error` is a collective's failure (NCCL's DistError; gloo's RuntimeError names gloo's sources)."""
    return isinstance(error, dist.DistError) or (isinstance(error, RuntimeError) and "gloo" in str(error))


@contextlib.contextmanager
def peer_errors(world: World, what: str) -> Iterator[None]:
    """Turn the failure of a collective inside (another rank stopped, the timeout passed) into a
    one-line RankLost (a MacasrError) that says so; other errors pass as they are. The rank that
    failed first printed its own error."""
    try:
        yield
    except Exception as e:
        if not (_active(world) and peer_lost(e)):
            raise
        first = " ".join(str(e).split())[:300]
        if dist.get_backend() == "gloo":  # else gloo's threads may abort the process at exit (SIGABRT)
            teardown()
        raise RankLost(f"rank {world.rank} of {world.size}: {what} failed, another rank stopped or did not answer "
                       f"within [train] distributed_timeout_s (its own error is printed by it): {first}") from None


def _collective(world: World, what: str, call: Any, *args: Any) -> Any:
    with peer_errors(world, what):
        return call(*args)


def barrier(world: World) -> None:
    """Wait until every rank gets here."""
    if _active(world):
        _collective(world, "waiting for the other ranks", dist.barrier)


def all_gather_object(world: World, obj: T) -> list[T]:
    """Every rank's `obj` (picklable, from ranks of this one job), in rank order; [obj] for one process."""
    if not _active(world):
        return [obj]
    gathered: list[Any] = [None] * world.size
    _collective(world, "gathering results", dist.all_gather_object, gathered, obj)
    return gathered


def broadcast_decision(world: World, value: T) -> T:
    """Rank 0's `value` (a decision such as early stopping) on every rank."""
    if not _active(world):
        return value
    box = [value]
    _collective(world, "sharing rank 0's decision", dist.broadcast_object_list, box, 0)
    return box[0]


def sum_tensor_over_ranks(world: World, value: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of `value` over ranks, a new tensor (all-reduce on its device: a GPU for NCCL)."""
    total = value.detach().clone()
    if _active(world):
        _collective(world, "summing over ranks", dist.all_reduce, total)
    return total


def mean_over_ranks(world: World, value: float) -> float:
    """The mean of a number over ranks (e.g. a metric each rank measured); `value` in one process."""
    if not _active(world):
        return value
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    return float(sum_tensor_over_ranks(world, torch.tensor([float(value)], dtype=torch.float64, device=device))) / world.size


# ---------------------------------------------------------------- launching on one machine


def free_port() -> int:
    """A TCP port free on this machine now, for a local rendezvous."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_local(nproc: int, args: Sequence[str]) -> str | None:
    """Run `python -m macasr <args>` as `nproc` ranks on this machine with torchrun's launcher (the
    elastic agent, in this process, on a free local port, no restarts), like
    `torchrun --nproc-per-node N -m macasr <args>` with one line instead of its report on failure.

    → None, or the name of the stop signal ("SIGTERM", "SIGINT") the launcher received: it passed
    it on to the ranks, which finished their step and wrote last.pt (rank 0 said how to resume).
    MacasrError when this process is itself a rank of a distributed job, or when a rank failed
    (the rank that failed first printed its own error; the launcher stopped the others)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    world = current_world()
    if world.distributed:
        raise MacasrError(f"--nproc {nproc}: this process is already rank {world.rank} of {world.size} (started by "
                          "torchrun); give --nproc only to a plain `macasr train`")
    # torchrun's own default with several processes: N ranks of all-core thread pools would fight over the cores
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    # The agent logs each rank it stops and each that failed; the one line below says what counts.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"macasr-{os.getpid()}",
                          rdzv_backend="c10d", rdzv_endpoint=f"127.0.0.1:{free_port()}", max_restarts=0)
    try:
        elastic_launch(config, sys.executable)("-m", "macasr", *args)
    except SignalException as e:  # pre-emption or Ctrl-C: the agent stopped the ranks with the same signal
        return signal.Signals(e.sigval).name
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        raise MacasrError(f"--nproc {nproc}: rank {rank} of {nproc} failed first (exit status {failure.exitcode}), with its "
                          "error printed above; the other ranks were stopped") from None
    return None
