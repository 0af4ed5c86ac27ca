"""`macasr train CONFIG`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from macasr.cli._common import SetOpt, console, fail, handle_errors


@handle_errors
def train(
    config: Annotated[Path, typer.Argument(help="TOML config (see `macasr config init`).")],
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the run folder's last.pt.")] = False,
    resume_from: Annotated[Path | None, typer.Option("--resume-from", help="Continue from this last.pt (e.g. one copied from another folder) into the config's run folder.", show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Start over in a run folder that holds an earlier run (removes its config.toml, metrics.jsonl and .pt files).")] = False,
    nproc: Annotated[int, typer.Option("--nproc", min=1, help="Train in this many processes on this machine (one per GPU; torchrun's launcher with DistributedDataParallel). Across machines, start `torchrun -m macasr train` on each (docs/training.md).")] = 1,
    sets: SetOpt = None,
) -> None:
    """Train a connector (and whatever else the config unfreezes); writes runs/<name>/.

    A run folder that already holds a run is never overwritten unless --resume or --overwrite is given.
    SIGTERM (pre-emption) or Ctrl-C finish the current step, write last.pt and exit 0 (SIGTERM)
    or 130 (Ctrl-C); --resume continues from there.
    """
    import shlex

    from macasr import config_overrides
    from macasr.train.distributed import current_world, launch_local
    from macasr.train.faults import EXIT_CODES
    from macasr.train.run import train as run_training

    if resume and resume_from is not None:
        raise fail("--resume continues the run folder's own last.pt and --resume-from another; give only one")
    flags = [f" --set {shlex.quote(s)}" for s in sets or []]  # repeated: each process, and a resume, loads the same config
    cfg = config_overrides.load(config, sets)  # a bad config fails here, once, before any process starts
    if nproc > 1:
        args = ["train", str(config), *(["--resume"] * resume), *(["--resume-from", str(resume_from)] if resume_from else []),
                *(["--overwrite"] * overwrite), *(a for s in sets or [] for a in ("--set", s))]
        stopped = launch_local(nproc, args)  # each rank prints as `macasr train` does; rank 0 the summary
        if stopped is not None:  # rank 0 said where it stopped and how to resume
            raise typer.Exit(EXIT_CODES.get(stopped, 1))
        return
    result = run_training(cfg, console, resume=resume_from or resume, overwrite=overwrite)
    main = current_world().is_main
    if result.signal is not None:
        if main:
            size = current_world().size  # the data position holds this many ranks' share
            again = f"macasr train {config} --resume" + (f" --nproc {size}" if size > 1 else "") + "".join(flags)
            console.print(f"stopped by {result.signal} at step {result.steps}; continue with: {again}")
        raise typer.Exit(EXIT_CODES.get(result.signal, 1))
    if not main:
        return
    best = "n/a" if result.best_wer is None else f"{100 * result.best_wer:.2f} % at step {result.best_step}"
    console.print(f"done: {result.steps} steps, best valid WER {best}; checkpoints in {result.run_dir}")
