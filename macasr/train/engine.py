"""The training loop, read top to bottom: micro-batches → optimizer step → log → validate → save.

Counting is in optimizer steps; `grad_accum` micro-batches make one step. A step whose loss or
gradient norm is not finite is not taken (weights, optimizer and scheduler untouched) and is
reported with its clips; [train] max_bad_steps such steps in a row stop the run (so do batches
skipped for running out of device memory, [train] on_oom). SIGTERM or Ctrl-C finish the step,
write last.pt and return (train/faults.py). Validation decodes the
valid set greedily and scores WER; the best WER so far is kept as best.pt, and training stops
after `patience` validations without improvement ([train] keep_best keeps the next best too,
train/resume.py). last.pt (after each validation and every [train] save_every steps) holds
everything needed to resume, including the sampler's position and every RNG, so a resumed run
draws the batch, the augmentation and the dropout the uninterrupted run would have drawn next.

Data: each training source's cuts (target text normalized, duration limits applied) are mixed by
weight into one stream (endless with several sources), clips whose target has more tokens than
the decoder may emit are dropped and reported, and lhotse's DynamicBucketingSampler batches them.
With several ranks and a Shar folder among the sources, each rank's stream is its own part of the
data (loader.own_part), endless, and last.pt holds every rank's data position and RNG state.
Bad clips are printed once and written once to bad_clips.jsonl in the run folder
(`[data] on_bad_clip = "skip"`), or stop the run naming the file (`"error"`).
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape

from macasr import config as config_module
from macasr.config import Config
from macasr.data.augment import SpecAugment
from lhotse import CutSet
from lhotse.cut import Cut

from macasr.data.collate import BadClip, Batch
from macasr.data.loader import (
    CutDataset, NothingToSample, TokenLimit, WithEpoch, build_loader, check_bad_clips, mix_streams, own_part, restore_sampler,
    sampler_state, source_stream, train_sampler,
)
from macasr.data.manifest import manifest_kind
from macasr.errors import CheckpointError, DataError, MacasrError
from macasr.evaluate.run import decoding_options, evaluate_cuts
from macasr.model.build import autocast
from macasr.model.llm import TargetTokenizer
from macasr.model.speech_llm import SpeechLLM
from macasr.train import checkpoint, ddp, faults, resume as resuming
from macasr.train.distributed import RankLost, World, barrier, broadcast_decision
from macasr.train.optim import build_optimizer, learning_rates
from macasr.train.schedule import build_scheduler
from macasr.train.curves import draw_curves
from macasr.train.tracking import (
    LogWindow, MetricsLog, RunSummary, score_valid_sets, start_tensorboard, start_wandb, summary_table, training_progress,
    wer_by_dataset,
)

# Parts of last.pt that --resume reads, besides the weights ("sampler" too when present: the data position).
RESUME_PARTS = ("optimizer", "scheduler", "rng", "epoch", "batches_in_epoch", "bad_validations", "metrics")
# Micro-batches in a row without one usable clip before an endless (mixed) stream is declared unreadable.
MAX_EMPTY_BATCHES = 100
BAD_CLIPS_FILE = "bad_clips.jsonl"


@dataclasses.dataclass
class TrainResult:
    steps: int
    best_wer: float | None
    best_step: int | None
    stopped_early: bool
    run_dir: Path
    signal: str | None = None  # "SIGTERM" / "SIGINT" when a stop signal ended the run (last.pt written)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def config_changes(stored: dict[str, Any], given: dict[str, Any], tables: tuple[str, ...] = ("model", "prompt")) -> list[str]:
    """'model.connector.hidden_dim: 64 in the checkpoint, 128 given' for each differing key of `tables`."""
    def flat(d: Any, prefix: str) -> dict[str, Any]:
        if not isinstance(d, dict):
            return {prefix: d}
        return {k: v for key, sub in d.items() for k, v in flat(sub, f"{prefix}.{key}").items()}

    def show(values: dict[str, Any], key: str) -> str:
        return repr(values[key]) if key in values else "unset"

    old = {k: v for t in tables for k, v in flat(stored.get(t, {}) if isinstance(stored, dict) else {}, t).items()}
    new = {k: v for t in tables for k, v in flat(given.get(t, {}), t).items()}
    return [f"{k}: {show(old, k)} in the checkpoint, {show(new, k)} given"
            for k in sorted(old.keys() | new.keys()) if k not in old or k not in new or old[k] != new[k]]


def _sources(described: list[dict[str, Any]]) -> str:
    """'librispeech (a.jsonl.gz, weight 1), own (b.jsonl, weight 2)' from Trainer.data_sources."""
    parts = [f"{d['name']} ({', '.join(map(str, d['manifests']))}, weight {d['weight']:g})" for d in described if "name" in d]
    limits = described[-1] if described and "name" not in described[-1] else {}
    extra = ", ".join(f"[data] {k} {v:g}" for k, v in limits.items() if v)
    return "; ".join(parts) + (f"; {extra}" if extra else "")


def _processes(count: int, own_data: bool) -> str:
    """'2 processes each reading its own part of the data', '1 process'."""
    return f"{count} process{'es' if count > 1 else ''}" + (" each reading its own part of the data" if own_data else "")


class Trainer:
    """Train `model` on `train` (pairs of a `DataSource` and its lazy CutSet), validating on `valid`
    (cuts, at most [eval] valid_max_utterances of them are decoded). `augment(cut, epoch)` and
    `frames_from(cut)` are the dataset's hooks (waveform augmentation; cached encoder frames)."""

    def __init__(
        self, cfg: Config, model: SpeechLLM, train: Sequence[tuple[Any, CutSet]], valid: Sequence[Cut],
        device: torch.device, precision: str, console: Console | None = None, *, world: World = World(),
        augment: Callable[[Cut, int], Cut] | None = None, frames_from: Callable[[Cut], torch.Tensor] | None = None,
    ) -> None:
        self.cfg, self.model, self.device, self.precision = cfg, model, device, precision
        self.world = world
        self.console = console or Console()
        self.run_dir = cfg.run_dir
        self.valid = list(valid[: cfg.eval.valid_max_utterances or None])
        t, d = cfg.train, cfg.data
        tokenize = TargetTokenizer(model.tokenizer, model.prompt.end_id)
        # Several ranks with a Shar folder: each rank's streams are its own part of the data (run.training_sets),
        # endless and sampled as one process's; else every rank reads it all and keeps every world.size-th batch.
        self.own_data = own_part([p for source, _ in train for p in source.manifests], world.rank, world.size)[1] > 1
        self.positions = [(0, 0)] * world.size  # with own_data: every rank's (epoch, batches_in_epoch) after the last step
        self.endless = len(train) > 1 or self.own_data  # a mixture repeats each source without end
        # What the data position in last.pt means: the same position in other data is another batch.
        self.data_sources = [dataclasses.asdict(source) for source, _ in train] + [{"min_duration": d.min_duration,
                                                                                     "max_duration": d.max_duration}]
        self.dropped: set[str] = set()  # cuts left out because their target is too long (reported once)
        limit = TokenLimit(lambda text: len(tokenize(text)), decoding_options(cfg), self._too_long)
        streams = [source_stream(cuts, source, d.min_duration, d.max_duration).filter(limit) for source, cuts in train]
        stream = mix_streams(streams, [source.weight for source, _ in train], t.seed, endless=self.own_data)
        rank, ranks = (0, 1) if self.own_data else (world.rank, world.size)
        try:
            self.sampler = train_sampler(
                stream, max_batch_seconds=d.max_batch_seconds, batch_size=d.batch_size, num_buckets=d.num_buckets,
                quadratic_duration=d.quadratic_duration, seed=t.seed, rank=rank, world_size=ranks,
                audio_inside=any(manifest_kind(p) == "shar" for source, _ in train for p in source.manifests),
            )
        except NothingToSample:
            raise DataError(self._nothing_left()) from None
        self.dataset = CutDataset(model.encoder.featurizer, tokenize, augment=augment, frames_from=frames_from,
                                  feature_augment=SpecAugment(t.seed) if d.spec_augment or d.frame_mask else None)
        self.loader = faults.track_loader(build_loader(self.dataset, WithEpoch(self.sampler), d.num_workers, seed=t.seed,
                                                       worker_init_fn=faults.ignore_stop_signals))
        self.optimizer = build_optimizer(model, t.optimizer, t.lr, t.weight_decay, t.muon_lr)
        self.forward_model = ddp.wrap(model, world, device)  # DDP over what trains when several ranks
        self.pending_bad_clips: list[tuple[str, BadClip | str]] = []  # (label, clip or line) a rank > 0 met, for rank 0
        self.scheduler = build_scheduler(self.optimizer, t.warmup_steps, t.max_steps, t.min_lr_ratio)
        self.step = 0
        self.epoch = 0
        self.batches_in_epoch = 0
        self.best_wer: float | None = None
        self.best_step: int | None = None
        self.bad_validations = 0
        self.best = resuming.BestCheckpoints(self.run_dir, t.keep_best)
        self.stop = faults.StopSignals(self._stopping)
        self.stopping = False  # a stop signal reached this rank, or any rank (they stop after the same step)
        self.alone = False  # this rank failed, or lost another: no more collectives (for last.pt)
        self.bad_steps = 0  # optimizer steps refused in a row (non-finite loss or gradient)
        self.saved_step: int | None = None  # step of the newest last.pt, the checkpoint a stop keeps
        self.step_position = (0, 0)  # (epoch, batches_in_epoch) after the last optimizer step
        self.metrics: MetricsLog | None = None
        self.grad_norm: torch.Tensor | None = None  # of the last step, before clipping (a device tensor)
        self.window = LogWindow()
        self.reported: set[str] = set()  # clip problems already printed (skipped clips, warnings)

    # ------------------------------------------------------------------ data

    def _batches(self) -> Iterator[Batch]:
        """Endless micro-batches, epoch after epoch; reports unreadable clips and clip warnings once each.

        DataError when `on_bad_clip = "error"` meets a bad clip, when a whole epoch has no usable
        clip, or (endless mixture) MAX_EMPTY_BATCHES batches in a row have none."""
        while True:
            self.sampler.set_epoch(self.epoch)
            start, usable, skipped, empty_run = self.batches_in_epoch, 0, 0, 0
            for batch in self.loader:
                self.batches_in_epoch += 1
                skip = self.cfg.data.on_bad_clip == "skip"
                self._bad_clips("skipped clip" if skip else "bad clip", batch.bad_clips)
                check_bad_clips(batch, self.cfg.data.on_bad_clip)
                self._report_once("warning", batch.warnings)
                usable, skipped = usable + len(batch), skipped + len(batch.bad_clips)
                empty_run = 0 if len(batch) else empty_run + 1
                if self.endless and empty_run >= MAX_EMPTY_BATCHES:
                    raise DataError(f"[data] train: {empty_run} batches in a row held no readable clip (each bad clip "
                                    f"is named above and in {self.run_dir / BAD_CLIPS_FILE}); fix or remove them")
                if len(batch):
                    yield batch
            if self.batches_in_epoch == start == 0:
                raise DataError(self._nothing_left())
            if not usable and skipped:  # another epoch would find nothing either: never loop forever
                raise DataError(f"[data] train: none of the {skipped:,} training clips could be read "
                                f"(each is named above); fix or remove them")
            self.epoch += 1
            self.batches_in_epoch = 0

    def _nothing_left(self) -> str:
        d, e = self.cfg.data, self.cfg.eval
        return (f"[data] train: no training clip is left after the duration limits ([data] min_duration "
                f"{d.min_duration:g} s, max_duration {d.max_duration:g} s, and those of [datasets.*]) and the token "
                f"limit ([eval] max_tokens_per_second {e.max_tokens_per_second:g}, max_tokens_base {e.max_tokens_base}); "
                "0 means off")

    def _report_once(self, label: str, lines: Iterable[str]) -> None:
        """Print each clip problem once per run, however many epochs or validations meet it."""
        for line in lines:
            if line not in self.reported:
                self.reported.add(line)
                if not self.world.is_main:  # rank 0 prints it after the next step or validation
                    self.pending_bad_clips.append((label, line))
                    continue
                self.console.print(f"{label}: {line}", style="yellow", markup=False)

    def _bad_clips(self, label: str, clips: Iterable[BadClip]) -> None:
        """Print each bad clip once and append it once to bad_clips.jsonl in the run folder."""
        for clip in clips:
            if clip.line in self.reported:
                continue
            if not self.world.is_main:  # rank 0 prints and writes it after the next step (ddp.step_totals)
                self.reported.add(clip.line)
                self.pending_bad_clips.append((label, clip))
                continue
            self._report_once(label, [clip.line])
            self.run_dir.mkdir(parents=True, exist_ok=True)
            with open(self.run_dir / BAD_CLIPS_FILE, "a", encoding="utf-8") as f:
                f.write(json.dumps(clip.record(), ensure_ascii=False) + "\n")

    def _write_shared_bad_clips(self, shared: list[tuple[str, BadClip | str]]) -> None:
        """Rank 0 prints (and writes, for bad clips) the (label, bad clip or warning line) pairs the
        other ranks sent; they hold none once sent."""
        self.pending_bad_clips = []
        for label, item in shared if self.world.is_main else []:
            if isinstance(item, BadClip):
                self._bad_clips(label, [item])
            else:
                self._report_once(label, [item])

    def _too_long(self, cut: Cut, tokens: int, cap: int) -> None:
        """Report a training cut dropped for a target longer than the decoder may emit (once each)."""
        origin = (cut.custom or {}).get("origin")
        key = f"{origin or ''} {cut.id}"
        if key in self.dropped:
            return
        self.dropped.add(key)
        where = f" ({origin})" if origin else ""
        line = (f"{cut.id}{where}: its target has {tokens} tokens, more than the {cap} that {cut.duration:.2f} s allow "
                f"([eval] max_tokens_per_second, max_tokens_base); {len(self.dropped):,} dropped so far")
        if self.own_data:  # this rank alone reads the clip: rank 0 prints it for all
            self._report_once("dropped clip", [line])
        else:
            self.console.print(f"dropped clip: {line}", style="yellow", markup=False)

    # ------------------------------------------------------------------ loop

    def fit(self) -> TrainResult:
        if self.world.is_main:  # rank 0 alone writes the run folder
            self.run_dir.mkdir(parents=True, exist_ok=True)
            config_module.dump(self.cfg, self.run_dir / "config.toml")
            tensorboard = start_tensorboard(self.run_dir, self.step) if self.cfg.logging.tensorboard else None
            self.metrics = MetricsLog(self.run_dir / "metrics.jsonl", self._wandb(), fresh=self.step == 0, tensorboard=tensorboard)
        else:
            self.metrics = ddp.NoMetrics()  # type: ignore[assignment]
        first_step, self.window = self.step, LogWindow()
        summary = None
        try:
            with self.stop:
                stopped_early = self._loop(self.metrics)
                if self._stop_now():
                    self.console.print(f"[yellow]{escape(self.stop.received or 'another rank was stopped')}: "
                                       f"{escape(self._keep_progress())}")
            summary = RunSummary.of(self.window, self.step, first_step, self.best_wer, self.best_step, self.run_dir)
        finally:
            faults.close_workers(self.loader)
            self.metrics.close(summary.wandb() if summary else None, failed=summary is None)
        barrier(self.world)  # no rank reports success before rank 0 has written its last checkpoint
        if self.world.is_main:
            self.console.print(summary_table(summary))
            if self.cfg.logging.curves:
                self.console.print(draw_curves(self.run_dir), markup=False)
        # A rank stopped by another rank's signal ends as pre-empted (exit 0), like the one signalled.
        return TrainResult(self.step, self.best_wer, self.best_step, stopped_early, self.run_dir,
                           self.stop.received or ("SIGTERM" if self.stopping else None))

    def _stop_now(self) -> bool:
        """Whether a stop signal ends the loop before the next step: at once in one process; under
        several, once every rank knows (step_totals shares it), so all stop after the same step."""
        return self.stopping or (self.stop.received is not None and not self.world.distributed)

    def _stopping(self, name: str) -> None:
        """A stop signal arrived: say what happens next (the loop stops after this step)."""
        again = "; Ctrl-C again to stop at once, without saving" if name == "SIGINT" else ""
        self.console.print(f"[yellow]{name}: stopping after this step, then writing last.pt{again}")

    def _loop(self, metrics: MetricsLog) -> bool:
        """Optimizer steps until max_steps or early stopping; returns whether it stopped early.

        A DataError (bad clip with on_bad_clip = "error", unreadable data) first saves last.pt
        when steps were taken since the last one, and says so."""
        try:
            return self._steps(metrics)
        except (DataError, RankLost) as e:  # RankLost: another rank failed; rank 0 still keeps what was trained
            self.alone = True
            raise type(e)(f"{e}; {self._keep_progress()}") from None

    def _steps(self, metrics: MetricsLog) -> bool:
        t, log_every = self.cfg.train, self.cfg.logging.log_every
        batches = self._batches()
        self.model.train()
        window = self.window
        with training_progress(self.console) as progress:
            task = progress.add_task("train", total=t.max_steps, completed=self.step, stats="")
            while self.step < t.max_steps and not self._stop_now():
                loss, audio_s = self._optimizer_step(batches)
                self.step_position = (self.epoch, self.batches_in_epoch)
                if loss is None:  # refused: no step was taken
                    window.refuse(audio_s)
                    continue
                self.step += 1
                window.add(loss, audio_s, self.grad_norm)
                if self.step % log_every == 0 or self.step == t.max_steps:
                    stats = self._log_window(window, metrics)
                    progress.update(task, stats=stats)
                progress.update(task, completed=self.step)
                if self.step % t.valid_every == 0 or self.step == t.max_steps:
                    with window.paused():  # audio s/s measures training, not validation
                        stopped_early = self._validate(metrics)
                        self._save("last.pt", with_state=True)
                    if stopped_early:
                        return True
                elif t.save_every and self.step % t.save_every == 0:
                    self._save("last.pt", with_state=True)
        return False

    def _keep_progress(self) -> str:
        """Save last.pt when steps were taken since the last one → what a stop keeps, for its message."""
        if self.step and self.saved_step != self.step:
            self._save("last.pt", with_state=True)
        if self.saved_step is None:
            return "no step was taken yet"
        return f"training stopped at step {self.step}, resumable from {self.run_dir / 'last.pt'} (step {self.saved_step})"

    def _optimizer_step(self, batches: Iterator[Batch]) -> tuple[torch.Tensor | None, float]:
        """One optimizer step over grad_accum micro-batches → (mean loss, audio seconds seen).

        The loss stays a device tensor, read only when logged. The loss is None when the step was
        refused because its loss or gradient norm is not finite (see `_refuse_step`).
        """
        accum = self.cfg.train.grad_accum
        losses: list[torch.Tensor] = []
        ids: list[list[str]] = []
        audio_s = 0.0
        for micro in range(accum):
            batch = next(batches)
            try:
                with ddp.micro_step(self.forward_model, self.world, last=micro == accum - 1):
                    with autocast(self.device, self.precision):
                        loss = self.forward_model(batch.to(self.device))
                    # Each micro-batch loss is a mean; dividing by accum makes the summed gradient their mean.
                    (loss / accum).backward()
            except faults.OUT_OF_MEMORY:
                loss = None  # handled outside the except block, whose traceback holds the activations
            if loss is None:
                self._out_of_memory(batch)
                return None, audio_s
            losses.append(loss.detach().float())
            ids.append(batch.ids)
            audio_s += sum(batch.durations)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.cfg.train.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.train.grad_clip)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        # Over ranks (one all-reduce): every rank then refuses or takes the step alike.
        mean_loss, audio_s, shared, self.stopping = ddp.step_totals(self.world, torch.stack(losses).mean(), audio_s,
                                                                    self.pending_bad_clips, bool(self.stop.received))
        self._write_shared_bad_clips(shared)
        if self.own_data:  # where each rank's own data stands, for rank 0's last.pt
            self.positions = ddp.data_positions(self.world, (self.epoch, self.batches_in_epoch), mean_loss.device)
        self.grad_norm = norm
        # The one host sync per optimizer step: a step on a NaN/inf loss or gradient would turn
        # every trained weight (and the AdamW moments) into NaN for good.
        finite = bool(torch.isfinite(torch.stack([mean_loss, norm.float().to(mean_loss.device)])).all())
        if not finite:
            self.optimizer.zero_grad(set_to_none=True)
            self._refuse_step(losses, ids)
            return None, audio_s
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.bad_steps = 0
        return mean_loss, audio_s

    def _out_of_memory(self, batch: Batch) -> None:
        """Skip a step whose batch ran out of device memory ([train] on_oom = "skip"), or stop."""
        self.optimizer.zero_grad(set_to_none=True)
        faults.free_memory(self.device)
        seconds = float(sum(batch.durations))
        if self.metrics is not None:
            self.metrics.log(self.step + 1, out_of_memory_seconds=round(seconds, 2))
        if self.cfg.train.on_oom == "stop" or self.world.distributed:  # a rank that skipped would leave the others waiting
            self.alone = True
            why = "[train] on_oom = \"stop\"" if self.cfg.train.on_oom == "stop" else "several processes cannot skip a step one of them lost"
            line = faults.out_of_memory_line(self.step + 1, seconds, batch.ids, f"stopped ({why})")
            raise MacasrError(f"{line}; {self._keep_progress()}; lower [data] max_batch_seconds or batch_size")
        self._refuse_step([], [batch.ids], faults.out_of_memory_line(self.step + 1, seconds, batch.ids, "step skipped"))

    def _refuse_step(self, losses: list[torch.Tensor], ids: list[list[str]], line: str | None = None) -> None:
        """Report a refused step in one line naming its clips (`line` when given); MacasrError after
        [train] max_bad_steps in a row.

        Runs only on the rare bad path, so reading each micro-batch loss (more host syncs) is fine:
        it narrows the clips down to the micro-batches whose loss was not finite.
        """
        self.bad_steps += 1
        losses, ids = ddp.gather_lists(self.world, [loss.cpu() for loss in losses]), ddp.gather_lists(self.world, ids)  # all ranks
        bad = [group for loss, group in zip(losses, ids) if not bool(torch.isfinite(loss))]
        what = "loss" if bad else "gradient"
        clips = [c for group in (bad or ids) for c in group]
        shown = ", ".join(clips[:8]) + (f" (+{len(clips) - 8} more)" if len(clips) > 8 else "")
        line = line or f"step {self.step + 1}: non-finite {what}, step not taken (weights unchanged); clips: {shown}"
        if self.metrics is not None:
            self.metrics.log(self.step + 1, refused_steps_in_a_row=self.bad_steps)
        if self.bad_steps >= (most := self.cfg.train.max_bad_steps):
            kept = (f"keeping {self.run_dir / 'last.pt'} (step {self.saved_step})" if self.saved_step is not None
                    else "no checkpoint was written yet")
            raise MacasrError(
                f"{line}; stopped after {most} refused steps in a row ([train] max_bad_steps), {kept}; "
                "check these clips for NaN or infinite samples, or lower [train] lr"
            )
        self.console.print(f"[yellow]{escape(line)}")

    def _log_window(self, window: LogWindow, metrics: MetricsLog) -> str:
        lr, muon = learning_rates(self.optimizer)
        line = window.flush(lr, self.device, self.world.size)
        metrics.log(self.step, **line, **({"muon_lr": muon} if muon is not None else {}), epoch=self.epoch)
        return f"loss {line['loss']:.3f}  lr {lr:.2e}  {line['audio_seconds_per_second']:,.0f} audio s/s"

    # ------------------------------------------------------------------ validation and checkpoints

    def _validate(self, metrics: MetricsLog) -> bool:
        """Decode the valid set, keep best.pt, and say whether patience has run out."""
        if not self.valid:
            self._save("best.pt")
            return False
        result, by_set = score_valid_sets(self.valid, lambda cuts, name: evaluate_cuts(
            self.model, cuts, name, self.cfg, self.device, self.precision,
            on_batch=lambda batch: self._bad_clips("skipped valid clip", batch.bad_clips),
            share=ddp.RankShare(self.world)))  # each rank decodes its share; all score all
        self._write_shared_bad_clips(ddp.gather_lists(self.world, self.pending_bad_clips))
        self._report_once("warning", result.warnings)
        if result.problem:  # a WER of nothing is no WER: never keep a "best" model by it
            raise DataError(f"[data] valid: {result.problem}")
        wer = result.wer
        improved = self.best_wer is None or wer < self.best_wer
        if improved:  # before saving, so best.pt's metrics name itself as the best
            self.best_wer, self.best_step, self.bad_validations = wer, self.step, 0
        else:
            self.bad_validations += 1
        self.best.add(wer, self.step, self._save)  # best.pt, and best-step<N>.pt with keep_best > 1
        per_set = wer_by_dataset(by_set)
        metrics.log(self.step, valid_wer=round(wer, 5), valid_cer=round(result.cer, 5), best_wer=round(self.best_wer, 5),
                    valid_wer_by_dataset=per_set)
        mark = "[green]new best" if improved else f"no improvement ({self.bad_validations}/{self.cfg.train.patience or '∞'})"
        sets = "  (" + ", ".join(f"{escape(n)} {'n/a' if w is None else f'{100 * w:.2f} %'}" for n, w in per_set.items()) + ")"
        self.console.print(f"step {self.step}: valid WER {100 * wer:.2f} %  CER {100 * result.cer:.2f} %"
                           f"{sets if len(per_set) > 1 else ''}  {mark}")
        patience = self.cfg.train.patience
        stop = broadcast_decision(self.world, bool(patience and self.bad_validations >= patience))  # rank 0 decides
        if stop:
            self.console.print(f"[yellow]early stop: {patience} validation{'s' * (patience > 1)} without a better WER")
        return stop

    def _save(self, name: str, with_state: bool = False) -> None:
        """Write `name` (rank 0); `with_state`: the training state too (last.pt). Ranks that read their own
        data send rank 0 their RNG state (their dropout draws are their own), unless one failed (`alone`)."""
        rngs = ddp.gather_lists(self.world, [checkpoint.rng_state()]) if with_state and self.own_data and not self.alone else []
        if not self.world.is_main:  # rank 0 alone writes checkpoints; the others only note the step
            self.saved_step = self.step if with_state else self.saved_step
            return
        metrics = {"best_wer": self.best_wer, "best_step": self.best_step}
        payload = checkpoint.model_payload(self.model, self.cfg, self.step, metrics)
        if with_state:
            epoch, consumed = self.step_position  # micro-batches of an unfinished step are drawn again
            payload.update(
                optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                rng=checkpoint.rng_state(), epoch=epoch, batches_in_epoch=consumed,
                sampler=sampler_state(self.sampler, epoch, consumed), data_sources=self.data_sources,
                bad_validations=self.bad_validations, best_kept=self.best.state(),
            )
            if self.own_data:  # each rank restores its own ("sampler" is rank 0's)
                payload.update(rank_samplers=[sampler_state(self.sampler, *p) for p in self.positions],
                               rank_positions=[list(p) for p in self.positions], **({"rank_rng": rngs} if rngs else {}))
        checkpoint.save_checkpoint(self.run_dir / name, payload)
        if with_state:
            self.saved_step = self.step

    def resume(self, path: Path) -> None:
        """Continue from last.pt: weights, optimizer, scheduler, RNG, data position, best so far.

        CheckpointError when last.pt lacks the training state (a best.pt holds weights only) or
        its weights do not fit the model built from the given config (the message then lists
        the [model]/[prompt] settings that differ from those stored in last.pt).
        """
        data = checkpoint.load_checkpoint(path)
        checkpoint.require(data, RESUME_PARTS, path, "--resume", "it holds weights only, like a best.pt; "
                           "resume from a last.pt, or start over with --overwrite")
        given, stored = config_module.to_dict(self.cfg), resuming.stored_with_defaults(data["config"])
        fixed, changed = resuming.split_changes(config_changes(stored, given, tuple(given)))
        if fixed:
            raise CheckpointError(resuming.refusal(path, fixed))
        moved = resuming.moved_folders(changed)
        built_from = "the given config" + (" (with model folders other than the checkpoint's)" if moved else "")
        checkpoint.load_trainable(self.model, data["model"], path, built_from)
        if moved:
            self.console.print(f"[yellow]{escape(resuming.moved_note(path, moved))}")
        if changed := [c for c in changed if c not in moved]:
            self.console.print(f"[yellow]resuming with settings that differ from {escape(str(path))}: {escape('; '.join(changed))}")
        try:
            self.optimizer.load_state_dict(data["optimizer"])
            self.scheduler.load_state_dict(data["scheduler"])
            checkpoint.set_rng_state(data["rng"])
        except (KeyError, ValueError, TypeError, RuntimeError) as e:
            raise CheckpointError(f"{path}: its training state does not fit this run ({type(e).__name__}: {e})") from None
        self.step, self.epoch, self.batches_in_epoch = data["step"], data["epoch"], data["batches_in_epoch"]
        self.step_position = (self.epoch, self.batches_in_epoch)
        self._restore_data_position(data, path)
        self.best_wer, self.best_step = data["metrics"].get("best_wer"), data["metrics"].get("best_step")
        self.bad_validations = data["bad_validations"]
        self.best.restore(data.get("best_kept"), self.best_wer, self.best_step)
        self.saved_step = self.step
        if dropped := resuming.truncate_metrics(self.run_dir / "metrics.jsonl", self.step):
            self.console.print(f"metrics.jsonl: dropped {dropped} line{'s' * (dropped > 1)} past step {self.step}, "
                               "which this run logs again")

    def _restore_data_position(self, data: dict[str, Any], path: Path) -> None:
        """Put the sampler where last.pt left it (an older last.pt without one restarts its epoch)."""
        if "sampler" not in data:
            self.console.print(f"[yellow]{escape(str(path))} holds no sampler state (written by an older macasr): "
                               f"epoch {self.epoch} of the training data starts over")
            self.batches_in_epoch = 0
            self.step_position = (self.epoch, 0)
            return
        if "data_sources" in data and data["data_sources"] != self.data_sources:
            raise CheckpointError(f"{path}: its data position was saved for other training data ({_sources(data['data_sources'])}; "
                                  f"this config gives {_sources(self.data_sources)}); resume with the [data] train datasets "
                                  "and duration limits it was saved with, or start over with --overwrite")
        saved = len(data["rank_samplers"]) if "rank_samplers" in data else int(data["sampler"].get("world_size") or 1)
        if (self.own_data or "rank_samplers" in data) and (saved, "rank_samplers" in data) != (self.world.size, self.own_data):
            raise CheckpointError(f"{path}: its data position was saved by {_processes(saved, 'rank_samplers' in data)}; "
                                  f"this run has {_processes(self.world.size, self.own_data)}; resume with the number of "
                                  f"processes it was saved with (--nproc {saved}), or start over with --overwrite")
        state = data["sampler"]
        if self.own_data:
            state, self.positions = data["rank_samplers"][self.world.rank], [(int(e), int(n)) for e, n in data["rank_positions"]]
            self.epoch, self.batches_in_epoch = self.step_position = self.positions[self.world.rank]
            if "rank_rng" in data:  # else (last.pt written after a rank failed) every rank goes on from rank 0's RNG
                checkpoint.set_rng_state(data["rank_rng"][self.world.rank])
        try:
            restore_sampler(self.sampler, state)
        except (ValueError, TypeError) as e:
            raise CheckpointError(f"{path}: {e}; resume with the [train] seed, [data] batch limits and number of "
                                  "processes it was saved with, or start over with --overwrite") from None
        self.reported |= self._bad_clips_seen()

    def _bad_clips_seen(self) -> set[str]:
        """Lines of the bad clips an earlier part of this run already wrote to bad_clips.jsonl."""
        path = self.run_dir / BAD_CLIPS_FILE
        if not path.is_file():
            return set()
        seen = set()
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                seen.add(BadClip(**json.loads(line)).line)
            except (ValueError, TypeError):  # a line cut by a crash: that clip is simply reported again
                continue
        return seen

    def _wandb(self) -> Any:
        if not self.cfg.logging.wandb:
            return None
        return start_wandb(self.cfg.logging.wandb_project, self.cfg.train.name, config_module.to_dict(self.cfg), self.run_dir)
