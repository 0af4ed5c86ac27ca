"""Checkpoint averaging (`macasr average`): the element-wise mean of several checkpoints' trained
weights, as icefall's `average_checkpoints` and ESPnet's `average_nbest_models` do, written as a
normal weights-only checkpoint that eval, transcribe and export take like a best.pt.

The checkpoints must be of the same model: the same [model] and [prompt] settings (model folders
aside: a folder may have moved between runs, and a note says so) and the same trained weight
names and shapes; the first difference is refused in one line. The result keeps
the first checkpoint's config and the highest step; its metrics["averaged"] names the averaged
files and their steps (no WER: the averaged model has not been validated; `macasr eval` scores it).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from macasr.errors import CheckpointError, MacasrError
from macasr.train import checkpoint

BEST_STEP = re.compile(r"best-step(\d+)\.pt")
LAST_TOO_FEW = "--last must be at least 2: averaging needs two checkpoints"


def run_checkpoints(run_dir: str | Path) -> list[Path]:
    """The checkpoints a run keeps: best.pt, best-step<STEP>.pt ([train] keep_best) and last.pt, those present."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: no such run folder")
    named = [run_dir / "best.pt", *sorted(p for p in run_dir.glob("best-step*.pt") if BEST_STEP.fullmatch(p.name)),
             run_dir / "last.pt"]
    return [p for p in named if p.is_file()]


def last_checkpoints(run_dir: str | Path, n: int) -> list[Path]:
    """The `n` kept checkpoints of a run with the highest steps (the step stored in each), newest first.

    Files of the same step hold the same weights (best.pt and last.pt both written at a validation):
    only the first of them (best.pt, then best-step<STEP>.pt, then last.pt) counts. CheckpointError when
    the run keeps fewer than `n` distinct steps, naming those it keeps; MacasrError for `n` < 2."""
    if n < 2:
        raise MacasrError(f"{LAST_TOO_FEW}, got {n}")
    by_step: dict[int, Path] = {}
    for path in run_checkpoints(run_dir):
        by_step.setdefault(int(checkpoint.load_checkpoint(path)["step"]), path)
    if len(by_step) < n:
        kept = ", ".join(f"{p.name} (step {s})" for s, p in sorted(by_step.items())) or "none"
        raise CheckpointError(f"{run_dir}: --last {n} needs {n} checkpoints of different steps, the run keeps "
                              f"{len(by_step)} ({kept}); raise [train] keep_best to keep more")
    return [by_step[s] for s in sorted(by_step, reverse=True)[:n]]


def _first_difference(first: dict[str, Any], other: dict[str, Any], path: Path, base: Path) -> str | None:
    """Why `other` (at `path`) cannot be averaged with `first` (at `base`), or None. Model folders
    (resume.FOLDER_KEYS) may differ: see `_moved_folders`."""
    from macasr.train.resume import FOLDER_KEYS, changed_key

    if changes := [c for c in _config_changes(first, other) if changed_key(c) not in FOLDER_KEYS]:
        changes.sort(key=lambda c: not changed_key(c).endswith(".name"))  # another component explains its keys
        key, _, values = changes[0].partition(": ")
        return f"its config differs in {key} ({values.replace('in the checkpoint', 'there').replace('given', 'here')})"
    a, b = first["model"], other["model"]
    if missing := next((n for n in a if n not in b), None):
        return f"it lacks weight {missing}, which {base} holds"
    if extra := next((n for n in b if n not in a), None):
        return f"it holds weight {extra}, which {base} lacks"
    if name := next((n for n in a if a[n].shape != b[n].shape), None):
        return f"weight {name} has shape {list(b[name].shape)}, in {base} {list(a[name].shape)}"
    return None


def _config_changes(first: dict[str, Any], other: dict[str, Any]) -> list[str]:
    """engine.config_changes of two checkpoints' [model] and [prompt] settings (`other`'s as 'given');
    keys a later macasr added count as their defaults."""
    from macasr.train.engine import config_changes
    from macasr.train.resume import stored_with_defaults

    return config_changes(stored_with_defaults(first["config"]), stored_with_defaults(other["config"]))


def _moved_folders(first: dict[str, Any], other: dict[str, Any], path: Path) -> str | None:
    """The note for `other` (at `path`) naming model folders other than `first`'s, or None: a folder
    is where a model's weights were read from (it may have moved between the runs), not what it is."""
    from macasr.train.resume import moved_folders

    if not (moved := moved_folders(_config_changes(first, other))):
        return None
    shown = "; ".join(m.replace("in the checkpoint", "in the first").replace("given", "there") for m in moved)
    return f"{path}: names other model folders than the first checkpoint ({shown}); the average keeps the first's"


def average_state(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise mean of same-named, same-shaped tensors, accumulated in float64 and returned in
    the first state's dtype. Integer and bool tensors (counters, masks) are not averaged: the
    first state's are taken as they are."""
    averaged = {}
    for name, first in states[0].items():
        if not (first.is_floating_point() or first.is_complex()):
            averaged[name] = first.clone()
            continue
        total = sum((s[name].to(torch.float64) for s in states[1:]), first.to(torch.float64))
        averaged[name] = (total / len(states)).to(first.dtype)
    return averaged


def average_checkpoints(paths: list[Path], out: str | Path, force: bool = False, notes: list[str] | None = None) -> Path:
    """Write the average of `paths` (at least two checkpoint files) to `out` → `out`.

    Raises CheckpointError (one line) for an unreadable file or the first difference between a
    checkpoint and the first one, and MacasrError for fewer than two files, a file given twice,
    `out` among the inputs, or an existing `out` without `force`. Checkpoints that differ only in
    their model folders ([model.encoder]/[model.llm] path) are averaged, the first's config kept;
    a line per such checkpoint is appended to `notes`."""
    paths, out = [Path(p) for p in paths], Path(out)
    if len(paths) < 2:
        raise MacasrError(f"averaging needs at least two checkpoints, got {len(paths)}")
    if len({p.resolve() for p in paths}) < len(paths):
        twice = next(p for i, p in enumerate(paths) if p.resolve() in {q.resolve() for q in paths[:i]})
        raise MacasrError(f"{twice}: given twice; each checkpoint counts once in an average")
    if out.resolve() in {p.resolve() for p in paths}:
        raise MacasrError(f"--out {out}: is one of the checkpoints averaged; write the average to a new file")
    if out.exists() and not force:
        raise MacasrError(f"--out {out}: already exists; replace it with --force")
    loaded = [checkpoint.load_checkpoint(p) for p in paths]
    for path, data in zip(paths[1:], loaded[1:]):
        if (why := _first_difference(loaded[0], data, path, paths[0])) is not None:
            raise CheckpointError(f"{path}: cannot be averaged with {paths[0]}: {why}")
    if notes is not None:
        notes += [note for path, data in zip(paths[1:], loaded[1:]) if (note := _moved_folders(loaded[0], data, path))]
    state = average_state([d["model"] for d in loaded])
    # One string, so that an export's model card keeps it (bundle metrics are scalars).
    metrics = {"averaged": f"{len(paths)} checkpoints: " + ", ".join(f"{p} (step {int(d['step'])})" for p, d in zip(paths, loaded))}
    step = max(int(d["step"]) for d in loaded)
    return checkpoint.save_checkpoint(out, {"config": loaded[0]["config"], "model": state, "step": step, "metrics": metrics})
