"""DistributedDataParallel for the engine: which weights sync, when, and validation split over ranks.

Only what trains takes part: the frozen encoder and LLM (and every buffer) are left out of DDP,
so they are neither broadcast at start nor synced in the forward pass; the ranks built them
from the same files. Trainable weights start equal on every rank (DDP broadcasts rank 0's).
Gradients are averaged over ranks on the last micro-batch of an accumulation only (`no_sync`
before), so one optimizer step on N ranks with grad_accum A sees N × A micro-batches, the
mean of their mean losses, as A × N micro-batches in one process would.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

import torch
from torch.nn.parallel import DistributedDataParallel

from macasr.infer.decode import Decoded
from macasr.model.speech_llm import SpeechLLM
from macasr.train import distributed
from macasr.train.distributed import World, all_gather_object

T = TypeVar("T")


def skips_layers(model: SpeechLLM) -> bool:
    """Whether a training forward pass may leave trainable weights unused, so that DDP must look for
    them (`find_unused_parameters`, an extra pass over the graph each step): only when the encoder
    trains (fully or by LoRA) and its checkpoint drops layers at random (LayerDrop: wav2vec2-style
    `layerdrop`, Whisper's `encoder_layerdrop`) or masks time spans with a trained embedding
    (`masked_spec_embed`, unused by a batch too short for a span, or with mask_time_prob = 0)."""
    encoder = model.encoder
    if not any(p.requires_grad for p in encoder.parameters()):
        return False
    config = getattr(getattr(encoder, "model", None), "config", None)
    layerdrop = any(float(getattr(config, key, 0.0) or 0.0) > 0 for key in ("layerdrop", "encoder_layerdrop"))
    masking = any(p.requires_grad for name, p in encoder.named_parameters() if name.endswith("masked_spec_embed"))
    return layerdrop or masking


def wrap(model: SpeechLLM, world: World, device: torch.device) -> torch.nn.Module:
    """`model` for the training forward pass: itself in one process, else DDP over its trainable
    weights (frozen weights and buffers ignored, `find_unused_parameters` only when `skips_layers`).

    The unwrapped model stays the one to save, validate and load into; this shares its weights."""
    if not world.distributed:
        return model
    ignored = [n for n, p in model.named_parameters() if not p.requires_grad] + [n for n, _ in model.named_buffers()]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, ignored)
    with distributed.peer_errors(world, "starting DDP (checking and copying the trainable weights)"):
        return DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=skips_layers(model),
        )


@contextlib.contextmanager
def micro_step(forward_model: torch.nn.Module, world: World, last: bool) -> Iterator[None]:
    """The context of one micro-batch's forward + backward: gradients sync across ranks only on the
    `last` micro-batch of an accumulation (DDP's `no_sync` before it; nothing in one process), and
    a rank lost during that sync is a one-line MacasrError (`distributed.peer_errors`)."""
    sync = last or not isinstance(forward_model, DistributedDataParallel)
    with distributed.peer_errors(world, "syncing gradients"), (contextlib.nullcontext() if sync else forward_model.no_sync()):
        yield


def step_totals(world: World, mean_loss: torch.Tensor, audio_s: float, pending: list[T],
                stopping: bool = False) -> tuple[torch.Tensor, float, list[T], bool]:
    """One all-reduce per optimizer step → (the mean of the ranks' mean losses, the audio seconds of all
    ranks, every rank's `pending` items when any rank has some, else [], whether any rank is
    `stopping`). In one process: the inputs.

    Every rank gets the same loss, so a non-finite loss on one rank makes all refuse the step; and
    a stop signal that reached one rank stops all after the same step (none waits for the others)."""
    if not world.distributed:
        return mean_loss, audio_s, [], stopping
    device = mean_loss.device
    stats = torch.stack([mean_loss.detach().double(), *(torch.tensor(float(x), dtype=torch.float64, device=device)
                                                        for x in (audio_s, len(pending), stopping))])
    summed = distributed.sum_tensor_over_ranks(world, stats)  # a lost rank: RankLost
    _, audio_total, pending_total, stopping_total = summed.tolist()  # one host sync
    shared = gather_lists(world, pending) if pending_total > 0 else []
    return (summed[0] / world.size).to(mean_loss.dtype), audio_total, shared, stopping_total > 0


def data_positions(world: World, mine: tuple[int, int], device: torch.device) -> list[tuple[int, int]]:
    """Every rank's data position (epoch, batches drawn in it), in rank order, from one small
    all-reduce on `device` (each rank fills its own row); [mine] in one process. Ranks that read
    their own parts of the data are at different positions, and rank 0 writes them all to last.pt."""
    table = torch.zeros(world.size, 2, dtype=torch.int64, device=device)
    table[world.rank] = torch.tensor(mine, dtype=torch.int64)
    return [(int(epoch), int(drawn)) for epoch, drawn in distributed.sum_tensor_over_ranks(world, table).tolist()]


def gather_lists(world: World, mine: list[T]) -> list[T]:
    """Every rank's list, joined in rank order (a collective; `mine` in one process)."""
    return [item for items in all_gather_object(world, mine) for item in items] if world.distributed else mine


class RankShare:
    """Validation over ranks: each decodes every world.size-th clip (`mine`), and `merge` gives every
    rank all ranks' transcripts, so WER (overall, per dataset) is over the whole validation set."""

    def __init__(self, world: World) -> None:
        self.world = world

    def mine(self, items: Sequence[T]) -> list[T]:
        """This rank's part of `items`: every world.size-th, from position world.rank."""
        return list(items[self.world.rank::self.world.size])

    def merge(self, decoded: Decoded) -> Decoded:
        """Every rank's `Decoded` as one (transcripts keyed by their index in the whole set)."""
        if not self.world.distributed:
            return decoded
        merged = Decoded()
        for part in all_gather_object(self.world, decoded):
            merged.hypotheses.update(part.hypotheses)
            merged.stop_reasons.update(part.stop_reasons)
            merged.skipped += part.skipped
            merged.warnings += part.warnings
            merged.no_speech |= part.no_speech
        return merged


class NoMetrics:
    """The metrics log of a rank > 0: takes every call (log, close, ...) and writes nothing."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None
