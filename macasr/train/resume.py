"""Checkpoints kept and runs continued: which config changes a resume allows, metrics.jsonl cut
back to the resumed step, and the k best checkpoints by validation WER.

A resume continues the same training: the model it builds must be the one in last.pt, and the
data position in last.pt means something only in the same data. So a config whose [model],
[prompt], [data], [datasets.*] or [augment] settings (or [train] seed) differ from the stored
one is refused, naming each differing key. [model.encoder] and [model.llm] path say where a
model's folder is, not what the model is: a folder that moved may be given anew (a line says so,
and the trained weights are checked against the model loaded from it). Everything else
(max_steps, valid_every, patience, save_every, keep_best, logging, decoding, ...) may change and
is listed. [data] num_workers, on_bad_clip and allow_commands say how data is read, not what it
is, and may change too.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from macasr.fileio import write_atomic

# Config tables whose settings define the model or the data: a change refuses the resume.
FIXED_TABLES = ("model", "prompt", "data", "datasets", "augment")
# Keys of other tables that fix the run too: the seed orders the data; an optimizer of another kind
# cannot take over the stored one's state.
FIXED_KEYS = ("train.seed", "train.optimizer")
# Keys of FIXED_TABLES that only say how the data is read.
FREE_KEYS = ("data.num_workers", "data.on_bad_clip", "data.allow_commands")
# Keys of FIXED_TABLES that say where a model's weights are read from, not what the model is: a
# folder that moved. The trained weights are checked against the model built from the new folder.
FOLDER_KEYS = ("model.encoder.path", "model.llm.path")


def with_defaults(stored: Any, defaults: Any) -> Any:
    """`stored` (a config as plain data, from a checkpoint) with the keys it lacks taken from
    `defaults` (e.g. keys added by a later macasr): a key it never had is no change when the
    given config leaves it at its default."""
    if not isinstance(stored, dict) or not isinstance(defaults, dict):
        return stored
    return {**defaults, **{k: with_defaults(v, defaults.get(k)) for k, v in stored.items()}}


def stored_with_defaults(stored: Any) -> Any:
    """A checkpoint's stored config (plain data) with the keys it lacks at their defaults, so that
    it compares key for key with `to_dict` of a parsed config. A component table ([model.encoder],
    [model.connector]) takes the defaults of the component it names, not of the default component:
    a stored `linear` connector gains no mlp `hidden_dim`. A component no registry knows (a plugin
    not loaded) gains nothing."""
    from macasr.config import Config

    return with_defaults(stored, _defaults_for(Config(), stored))


def _defaults_for(default: Any, stored: Any) -> dict[str, Any]:
    """`default` (a config dataclass) as plain data, each component table replaced by the defaults
    of the component `stored` names there ({} for one no registry knows)."""
    from macasr.config import _REGISTRIES

    out: dict[str, Any] = {}
    for field in dataclasses.fields(default):
        value, sub = getattr(default, field.name), stored.get(field.name) if isinstance(stored, dict) else None
        registry = _REGISTRIES.get(field.metadata.get("registry", ""))
        name = sub.get("name") if isinstance(sub, dict) else None
        if registry is not None and isinstance(name, str) and name != value.name:
            if name not in registry.names():
                out[field.name] = {}
                continue
            value = registry.config_type(name)(name=name)
        out[field.name] = _defaults_for(value, sub) if dataclasses.is_dataclass(value) else copy.deepcopy(value)
    return out


def changed_key(change: str) -> str:
    """'model.connector.hidden_dim' from engine.config_changes' 'model.connector.hidden_dim: 64 in ...'."""
    return change.split(":", 1)[0]


def is_fixed(key: str) -> bool:
    """Whether a change of `key` (a dotted config key) makes a resume a different run."""
    if key in FOLDER_KEYS or any(key == free or key.startswith(free + ".") for free in FREE_KEYS):
        return False
    return key.split(".", 1)[0] in FIXED_TABLES or key in FIXED_KEYS


def split_changes(changes: list[str]) -> tuple[list[str], list[str]]:
    """engine.config_changes lines → (those that refuse a resume, those it allows)."""
    fixed = [c for c in changes if is_fixed(changed_key(c))]
    return fixed, [c for c in changes if c not in fixed]


def moved_folders(changes: list[str]) -> list[str]:
    """The engine.config_changes lines of FOLDER_KEYS: model folders given at another place."""
    return [c for c in changes if changed_key(c) in FOLDER_KEYS]


def moved_note(path: Path, moved: list[str]) -> str:
    """The line a resume prints when model folders differ from those stored in `path`."""
    return (f"{path}: model folders given at another place than when it was written ({'; '.join(moved)}); its trained "
            "weights fit the model loaded from the given folders (another model of the same shapes cannot be told apart)")


def refusal(path: Path, fixed: list[str]) -> str:
    """The one-line reason a resume with model or data changes is refused."""
    shown = "; ".join(fixed[:6]) + (f"; and {len(fixed) - 6} more" if len(fixed) > 6 else "")
    return (f"{path}: the given config changes the model, data or optimizer this run was trained with ({shown}); "
            f"resume with the settings stored in it (the run folder's config.toml), or start over with --overwrite")


# ---------------------------------------------------------------- metrics.jsonl


def _step_of(line: str) -> int | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    step = record.get("step") if isinstance(record, dict) else None
    return step if isinstance(step, int) else None


def truncate_metrics(path: Path, step: int) -> int:
    """Keep the lines of metrics.jsonl up to `step` (those a resume from `step` does not log
    again), rewritten atomically → the number of lines dropped (past `step`, or cut short by a
    crash). A missing file is left missing."""
    if not path.is_file():
        return 0
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = [line for line in lines if (s := _step_of(line)) is not None and s <= step]
    if len(kept) < len(lines):
        write_atomic(path, "".join(line + "\n" for line in kept))
    return len(lines) - len(kept)


# ---------------------------------------------------------------- best checkpoints


def best_name(step: int) -> str:
    """The file of a kept checkpoint that is not (or no longer) the best: best-step<N>.pt."""
    return f"best-step{step}.pt"


@dataclasses.dataclass
class BestCheckpoints:
    """The `keep` checkpoints with the lowest validation WER: best.pt (the lowest) and
    best-step<N>.pt for the others, worse ones deleted. `kept` is [(wer, step), ...], lowest
    first, as stored in last.pt ("best_kept") so a resume keeps counting."""

    run_dir: Path
    keep: int = 1
    kept: list[tuple[float, int]] = dataclasses.field(default_factory=list)

    def admits(self, wer: float) -> bool:
        """Whether a validation with `wer` earns a kept checkpoint (ties go to the earlier one)."""
        return len(self.kept) < self.keep or wer < self.kept[-1][0]

    def add(self, wer: float, step: int, save: Callable[[str], None]) -> None:
        """Record a validation; `save(name)` writes the current model as `name` in the run folder,
        replacing the file (a new file renamed over it, as checkpoint.save_checkpoint does).

        A new best first moves the old best.pt's content to best-step<N>.pt (a hard link where
        the file system allows, else a copy), then writes best.pt: a crash in between leaves
        both files whole."""
        if not self.admits(wer):
            return
        is_best = not self.kept or wer < self.kept[0][0]
        if is_best and self.kept and self.keep > 1:
            _keep_copy(self.run_dir / "best.pt", self.run_dir / best_name(self.kept[0][1]))
        save("best.pt" if is_best else best_name(step))
        self.kept = sorted([*self.kept, (wer, step)], key=lambda k: (k[0], k[1]))
        for _, dropped in self.kept[self.keep:]:
            (self.run_dir / best_name(dropped)).unlink(missing_ok=True)
        self.kept = self.kept[: self.keep]

    def state(self) -> list[list[Any]]:
        return [[wer, step] for wer, step in self.kept]

    def restore(self, state: Any, best_wer: float | None, best_step: int | None) -> None:
        """From last.pt's "best_kept" (or, in an older last.pt, from its best WER alone)."""
        if isinstance(state, list):
            self.kept = [(float(wer), int(step)) for wer, step in state]
        elif best_wer is not None and best_step is not None:
            self.kept = [(best_wer, best_step)]
        for _, dropped in self.kept[self.keep:]:  # keep_best lowered since: fewer are kept from now on
            (self.run_dir / best_name(dropped)).unlink(missing_ok=True)
        self.kept = self.kept[: self.keep]


def _keep_copy(source: Path, target: Path) -> None:
    """`target` with `source`'s content, never half-written (a link or a copy renamed into place)."""
    if not source.is_file():
        return
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")  # fileio's pattern: cleaned up if left
    try:
        os.link(source, tmp)
    except OSError:  # a file system without hard links
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)
