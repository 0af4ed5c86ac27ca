"""What a training run does when something outside the step goes wrong.

- SIGTERM (a cluster's pre-emption, `scancel`, `kill`) or SIGINT (Ctrl-C): `StopSignals` notes
  the signal; the engine finishes the step it is in, writes last.pt and returns. The CLI then
  exits 0 for SIGTERM (pre-emption is routine) and 130 (128 + SIGINT) for Ctrl-C. A second
  Ctrl-C stops at once (KeyboardInterrupt). DataLoader workers ignore both signals
  (`ignore_stop_signals`), so a Ctrl-C in a terminal, which reaches the whole process group,
  does not kill them under the step being finished; they end with the main process.
- Out of device memory on one batch: `out_of_memory_line` says what was skipped (the batch's
  clips and total seconds of audio), `free_memory` returns the cached blocks.
- Two runs in one run folder: `RunLock` (the file `train.lock`, naming the host and pid of the
  run that holds it) makes the second refuse; a lock left by a killed run is taken over.
- Temporary files left by a process killed while writing (`fileio.atomic_open`):
  `remove_stale_temporaries` deletes a run folder's when the run starts or resumes.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import time
import weakref
from pathlib import Path
from types import FrameType
from typing import Any

import torch

from macasr.errors import MacasrError
from macasr.fileio import stale_temporaries, write_atomic

LOCK_FILE = "train.lock"
# Exit status of `macasr train` after a stop signal: pre-emption is a normal end, Ctrl-C the
# shell's usual 128 + SIGINT.
EXIT_CODES = {"SIGTERM": 0, "SIGINT": 130}
# torch.cuda.OutOfMemoryError is the same class in torch >= 2.5; both are named for older ones.
OUT_OF_MEMORY: tuple[type[BaseException], ...] = tuple({torch.OutOfMemoryError, torch.cuda.OutOfMemoryError})


class StopSignals:
    """Context manager: while inside, SIGTERM and SIGINT set `received` ("SIGTERM" / "SIGINT")
    instead of ending the process; the previous handlers come back on exit.

    Outside the main thread (where Python cannot install handlers) it does nothing."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, on_signal: Any = None) -> None:
        self.received: str | None = None
        self.on_signal = on_signal  # called with the signal's name, e.g. to print one line
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        self.received = None
        try:
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread
            self._previous.clear()
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        first = self.received is None
        self.received = self.received or name
        if signum == signal.SIGINT:  # a second Ctrl-C stops at once
            signal.signal(signal.SIGINT, signal.default_int_handler)
        if first and self.on_signal is not None:
            self.on_signal(name)


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: a worker ignores SIGINT and SIGTERM, so the main process can
    finish its step (a worker killed under it makes torch raise in the main process wherever it
    is). Workers end when the main process closes them (`close_workers`, also at exit), or
    dies (torch's workers watch their parent)."""
    for sig in StopSignals.SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


_LOADERS: weakref.WeakSet[Any] = weakref.WeakSet()


def track_loader(loader: Any) -> Any:
    """Remember a DataLoader whose workers ignore stop signals, to close them at exit → `loader`."""
    _LOADERS.add(loader)
    return loader


def close_workers(loader: Any) -> None:
    """Stop a DataLoader's persistent workers now, through torch's own shutdown (a sentinel in
    each worker's queue). multiprocessing's exit handler would instead send them SIGTERM, which
    they ignore, and then wait for them for ever."""
    iterator = getattr(loader, "_iterator", None)  # where a DataLoader keeps persistent workers
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
    if iterator is not None:
        loader._iterator = None


@atexit.register  # runs before multiprocessing's exit handler, which was registered earlier
def _close_all_workers() -> None:
    for loader in list(_LOADERS):
        close_workers(loader)


# ---------------------------------------------------------------- out of memory


def out_of_memory_line(step: int, seconds: float, clips: list[str], action: str) -> str:
    """'step 12: out of memory on a batch of 3 clips, 41.2 s of audio (a, b, c); step skipped'."""
    shown = ", ".join(clips[:8]) + (f" (+{len(clips) - 8} more)" if len(clips) > 8 else "")
    return (f"step {step}: out of memory on a batch of {len(clips)} clips, {seconds:.1f} s of audio in total "
            f"({shown}); {action}")


def free_memory(device: torch.device) -> None:
    """Give the allocator's cached blocks back after an out-of-memory error (CUDA only)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- run folder


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files a killed writer left in `folder` → their paths. Call it only
    while holding the folder's RunLock: a live run's temporaries would be cut from under it."""
    removed = []
    for path in stale_temporaries(folder):
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


class RunLock:
    """`train.lock` in a run folder: {"host", "pid", "started"} of the run that trains into it.

    `acquire` refuses (MacasrError) when the lock is held by a live process on this host, or,
    unless `resume`, by a process on another host (its liveness cannot be checked from here).
    A lock whose process is gone (same host), or, when resuming, one from another host, is
    taken over, and `taken_over` says whose it was. `release` removes the file if it is ours.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_FILE
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.taken_over: str | None = None
        self.held = False
        self.created = False  # the run folder was made for the lock (removed again if left empty)

    def _holder(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # unreadable or cut short: a run killed while writing it
        return data if isinstance(data, dict) else {}

    def acquire(self, resume: bool) -> RunLock:
        self.created = not self.path.parent.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = json.dumps({"host": self.host, "pid": self.pid, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        try:
            with open(self.path, "x", encoding="utf-8") as f:  # O_EXCL: only one run wins
                f.write(record + "\n")
        except FileExistsError:
            self._take_over(self._holder(), resume, record)
        self.held = True
        return self

    def _take_over(self, holder: dict[str, Any] | None, resume: bool, record: str) -> None:
        host, pid = (holder or {}).get("host"), (holder or {}).get("pid")
        who = f"pid {pid} on host {host}" if host and isinstance(pid, int) else "an unreadable lock"
        if host == self.host and isinstance(pid, int) and pid != self.pid and _pid_alive(pid):
            raise MacasrError(f"{self.path.parent} is in use by another training run ({who}, see {self.path}); "
                              "wait for it to end, or give this run another [train] name")
        if host and host != self.host and isinstance(pid, int) and not resume:
            raise MacasrError(f"{self.path.parent} is locked by a training run on another host ({who}, see {self.path}); "
                              f"if that run has ended, continue with --resume (takes the lock over) or remove {self.path}")
        if holder is None:  # removed in between: nothing to take over
            self.taken_over = None
        elif not host or not isinstance(pid, int):
            self.taken_over = f"took over {self.path}: unreadable, left by a run killed while writing it"
        else:
            why = "its process is gone" if host == self.host else "on another host; make sure that run has ended"
            self.taken_over = f"took over the lock of {who} ({why})"
        write_atomic(self.path, record + "\n")

    def release(self) -> None:
        if not self.held:
            return
        holder = self._holder()
        if holder and holder.get("pid") == self.pid and holder.get("host") == self.host:
            self.path.unlink(missing_ok=True)
        self.held = False
        if self.created and not any(self.path.parent.iterdir()):  # a run that failed before writing anything
            self.path.parent.rmdir()

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
