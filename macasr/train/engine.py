"""The training loop, read top to bottom: micro-batches → optimizer step → log → validate → save.

Counting is in optimizer steps; `grad_accum` micro-batches make one step. Validation decodes the
valid set greedily and scores WER; the best WER so far is kept as best.pt, and training stops
after `patience` validations without improvement. last.pt holds everything needed to resume.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from macasr import config as config_module
from macasr.config import Config
from macasr.data.augment import spec_augment
from macasr.data.collate import Batch
from macasr.data.loader import build_loader
from macasr.data.manifest import Utterance
from macasr.evaluate.run import evaluate_utterances
from macasr.model.build import autocast
from macasr.model.llm import TargetTokenizer
from macasr.model.speech_llm import SpeechLLM
from macasr.train import checkpoint
from macasr.train.schedule import build_scheduler
from macasr.train.tracking import MetricsLog, start_wandb, training_progress


@dataclasses.dataclass
class TrainResult:
    steps: int
    best_wer: float | None
    best_step: int | None
    stopped_early: bool
    run_dir: Path


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over trainable parameters only; no decay on biases and norm weights (1-d tensors)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), fused=torch.cuda.is_available() or None)


class Trainer:
    def __init__(
        self, cfg: Config, model: SpeechLLM, train_set: list[Utterance], valid_set: list[Utterance],
        device: torch.device, precision: str, console: Console | None = None,
    ) -> None:
        self.cfg, self.model, self.device, self.precision = cfg, model, device, precision
        self.console = console or Console()
        self.run_dir = cfg.run_dir
        self.valid_set = valid_set[: cfg.eval.valid_max_utterances or None]
        t = cfg.train
        self.loader = build_loader(
            train_set, model.encoder.featurizer, tokenize=TargetTokenizer(model.tokenizer, model.prompt.end_id),
            batch_size=cfg.data.batch_size, max_batch_seconds=cfg.data.max_batch_seconds, shuffle=True,
            seed=t.seed, num_workers=cfg.data.num_workers, on_bad_clip=cfg.data.on_bad_clip,
            augment=spec_augment if cfg.data.spec_augment else None,
        )
        self.optimizer = build_optimizer(model, t.lr, t.weight_decay)
        self.scheduler = build_scheduler(self.optimizer, t.warmup_steps, t.max_steps, t.min_lr_ratio)
        self.step = 0
        self.epoch = 0
        self.batches_in_epoch = 0
        self.best_wer: float | None = None
        self.best_step: int | None = None
        self.bad_validations = 0
        self.skipped: list[str] = []

    # ------------------------------------------------------------------ data

    def _batches(self) -> Iterator[Batch]:
        """Endless micro-batches, epoch after epoch; reports unreadable clips and clip warnings once each."""
        sampler = self.loader.batch_sampler
        warned: set[str] = set()
        while True:
            sampler.set_epoch(self.epoch, self.batches_in_epoch)
            for batch in self.loader:
                self.batches_in_epoch += 1
                for line in batch.skipped:
                    if line not in self.skipped:
                        self.skipped.append(line)
                        self.console.print(f"[yellow]skipped clip: {line}")
                for line in batch.warnings:
                    if line not in warned:
                        warned.add(line)
                        self.console.print(f"warning: {line}", style="yellow", markup=False)
                if len(batch):
                    yield batch
            self.epoch += 1
            self.batches_in_epoch = 0

    # ------------------------------------------------------------------ loop

    def fit(self) -> TrainResult:
        t, log_every = self.cfg.train, self.cfg.logging.log_every
        self.run_dir.mkdir(parents=True, exist_ok=True)
        config_module.dump(self.cfg, self.run_dir / "config.toml")
        metrics = MetricsLog(self.run_dir / "metrics.jsonl", self._wandb(), fresh=self.step == 0)
        batches = self._batches()
        self.model.train()
        stopped_early = False
        window: dict[str, Any] = {"loss": 0.0, "steps": 0, "audio_s": 0.0, "t0": time.perf_counter()}
        with training_progress(self.console) as progress:
            task = progress.add_task("train", total=t.max_steps, completed=self.step, stats="")
            while self.step < t.max_steps:
                loss, audio_s = self._optimizer_step(batches)
                self.step += 1
                window["loss"] += loss
                window["steps"] += 1
                window["audio_s"] += audio_s
                if self.step % log_every == 0 or self.step == t.max_steps:
                    stats = self._log_window(window, metrics)
                    progress.update(task, stats=stats)
                progress.update(task, completed=self.step)
                if self.step % t.valid_every == 0 or self.step == t.max_steps:
                    stopped_early = self._validate(metrics)
                    self._save("last.pt", with_state=True)
                    if stopped_early:
                        break
                    window["t0"] = time.perf_counter()  # audio s/s measures training, not validation
        metrics.close()
        return TrainResult(self.step, self.best_wer, self.best_step, stopped_early, self.run_dir)

    def _optimizer_step(self, batches: Iterator[Batch]) -> tuple[torch.Tensor, float]:
        """One optimizer step over grad_accum micro-batches → (mean loss, audio seconds seen).

        The loss stays a device tensor (no per-step host sync); it is read only when logged.
        """
        accum = self.cfg.train.grad_accum
        total_loss, audio_s = torch.zeros((), device=self.device), 0.0
        for _ in range(accum):
            batch = next(batches)
            with autocast(self.device, self.precision):
                loss = self.model(batch.to(self.device))
            # Each micro-batch loss is a mean; dividing by accum makes the summed gradient their mean.
            (loss / accum).backward()
            total_loss += loss.detach() / accum
            audio_s += sum(batch.durations)
        if self.cfg.train.grad_clip > 0:
            params = [p for p in self.model.parameters() if p.requires_grad]
            torch.nn.utils.clip_grad_norm_(params, self.cfg.train.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total_loss, audio_s

    def _log_window(self, window: dict[str, Any], metrics: MetricsLog) -> str:
        elapsed = max(time.perf_counter() - window["t0"], 1e-9)
        loss = float(window["loss"]) / max(window["steps"], 1)
        lr = self.scheduler.get_last_lr()[0]
        speed = window["audio_s"] / elapsed
        metrics.log(self.step, loss=round(loss, 5), lr=lr, audio_seconds_per_second=round(speed, 1), epoch=self.epoch)
        window.update(loss=0.0, steps=0, audio_s=0.0, t0=time.perf_counter())
        return f"loss {loss:.3f}  lr {lr:.2e}  {speed:,.0f} audio s/s"

    # ------------------------------------------------------------------ validation and checkpoints

    def _validate(self, metrics: MetricsLog) -> bool:
        """Decode the valid set, keep best.pt, and say whether patience has run out."""
        if not self.valid_set:
            self._save("best.pt")
            return False
        result, _ = evaluate_utterances(self.model, self.valid_set, "valid", self.cfg, self.device, self.precision)
        wer = result.wer
        improved = self.best_wer is None or wer < self.best_wer
        if improved:
            self.best_wer, self.best_step, self.bad_validations = wer, self.step, 0
            self._save("best.pt")
        else:
            self.bad_validations += 1
        metrics.log(self.step, valid_wer=round(wer, 5), valid_cer=round(result.cer, 5), best_wer=round(self.best_wer, 5))
        mark = "[green]new best" if improved else f"no improvement ({self.bad_validations}/{self.cfg.train.patience or '∞'})"
        self.console.print(f"step {self.step}: valid WER {100 * wer:.2f} %  CER {100 * result.cer:.2f} %  {mark}")
        patience = self.cfg.train.patience
        if patience and self.bad_validations >= patience:
            self.console.print(f"[yellow]early stop: {patience} validations without a better WER")
            return True
        return False

    def _save(self, name: str, with_state: bool = False) -> None:
        metrics = {"best_wer": self.best_wer, "best_step": self.best_step}
        payload = checkpoint.model_payload(self.model, self.cfg, self.step, metrics)
        if with_state:
            payload.update(
                optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                rng=checkpoint.rng_state(), epoch=self.epoch, batches_in_epoch=self.batches_in_epoch,
                bad_validations=self.bad_validations,
            )
        checkpoint.save_checkpoint(self.run_dir / name, payload)

    def resume(self, path: Path) -> None:
        """Continue from last.pt: weights, optimizer, scheduler, RNG, data position, best so far."""
        data = checkpoint.load_checkpoint(path)
        checkpoint.load_trainable(self.model, data["model"], path)
        self.optimizer.load_state_dict(data["optimizer"])
        self.scheduler.load_state_dict(data["scheduler"])
        checkpoint.set_rng_state(data["rng"])
        self.step, self.epoch, self.batches_in_epoch = data["step"], data["epoch"], data["batches_in_epoch"]
        self.best_wer, self.best_step = data["metrics"]["best_wer"], data["metrics"]["best_step"]
        self.bad_validations = data["bad_validations"]

    def _wandb(self) -> Any:
        if not self.cfg.logging.wandb:
            return None
        return start_wandb(self.cfg.logging.wandb_project, self.cfg.train.name, config_module.to_dict(self.cfg), self.run_dir)

