"""From lhotse cuts to padded `Batch`es: streams, samplers, the dataset and DataLoaders.

The lhotse pattern: a sampler in the main process groups cuts into batches from their
durations alone (no audio I/O; `DynamicBucketingSampler` for training, longest first for
evaluation), and a map-style dataset turns each batch of cuts into a `Batch` in DataLoader
workers: read audio, check it, featurize, tokenize, pad.

A clip that cannot be used (missing, undecodable, empty, non-finite samples, shorter than the
STFT window, starting beyond the end of its file or running more than 10 % past it, features
that overflow, or marked `cut.custom["problem"]` by the manifest reader) becomes a `BadClip` on
`Batch.bad_clips`; callers skip and report it, or stop (`[data] on_bad_clip`). Nothing here
lists all cuts of a stream: memory stays flat.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import soxr
import torch
from lhotse import CutSet, MonoCut
from lhotse.cut import Cut
from lhotse.dataset import DynamicBucketingSampler, SimpleCutSampler
from lhotse.dataset.sampling.base import TimeConstraint
from lhotse.dataset.sampling.dynamic_bucketing import estimate_duration_buckets
from lhotse.lazy import LazyIteratorChain
from lhotse.utils import fastcopy
from torch.utils.data import DataLoader, Dataset

from macasr.audio import SAMPLE_RATE, _check_finite
from macasr.data.collate import BadClip, Batch, Example, NoSpeech, collate
from macasr.data.kaldi import read_sphere_with_soundfile
from macasr.data.manifest import DURATION_TOLERANCE, manifest_kind
from macasr.errors import DataError
from macasr.model.decoding import DecodingOptions

read_sphere_with_soundfile()  # Fisher/Switchboard .sph files without the sph2pipe program (docs/data.md)

BINS_ESTIMATE_CUTS = 10_000  # cuts read to place the bucket edges (lhotse's default)
BUFFER_CUTS = 20_000  # cuts the sampler holds in its buckets to draw from (lhotse's default): the shuffling window
# Shar cuts carry their encoded audio (~200 kB for 12 s of FLAC), so 20,000 of them would hold
# gigabytes in the training process; shard shuffling does the coarse shuffling there instead.
SHAR_BUFFER_CUTS = 2_000
PREFETCH_BATCHES = 4  # batches each worker prepares ahead (DataLoader prefetch_factor)


# ---------------------------------------------------------------- one clip


def audio_name(cut: Cut) -> str:
    """The audio file a cut reads (its path for file sources), else the recording or cut id."""
    recording = getattr(cut, "recording", None)
    if recording is None:
        return cut.id
    source = recording.sources[0]
    return str(source.source) if source.type in ("file", "url", "command") else recording.id


def bad_clip(cut: Cut, why: str) -> BadClip:
    custom = cut.custom or {}
    return BadClip(origin=custom.get("origin"), id=cut.id, audio=audio_name(cut), why=why)


class ClipProblem(Exception):
    """Why one clip cannot be used (a sentence without the file name, which BadClip adds)."""


def _fit_to_file(cut: Cut) -> Cut:
    """A MonoCut that runs past the end of its recording by at most DURATION_TOLERANCE of its
    duration → the part that exists. ClipProblem when it starts at or beyond the end, or more of
    it is missing (macasr JSONL rows are checked so when opened; this covers lhotse manifests)."""
    if not isinstance(cut, MonoCut) or cut.recording is None:
        return cut
    length = cut.recording.duration
    if cut.start >= length:
        raise ClipProblem(f"offset {cut.start:g} s is beyond the end of the file ({length:.2f} s)")
    if cut.end <= length:
        return cut
    if cut.end - length > DURATION_TOLERANCE * cut.duration:
        raise ClipProblem(f"offset {cut.start:g} s + duration {cut.duration:g} s runs past the end of the file "
                          f"({length:.2f} s)")
    return cut.truncate(duration=length - cut.start, preserve_id=True)


def read_wave(cut: Cut, min_samples: int = 0) -> np.ndarray:
    """A cut's audio → mono float32 samples at SAMPLE_RATE (its channels averaged, resampled with
    soxr as macasr.audio does: lhotse's own resampler needs scipy or torchaudio), every sample finite.

    ClipProblem when it cannot be read (lhotse's audio backends raise many exception types, so
    any exception while decoding is one), is empty, holds a NaN or infinite sample, or is
    shorter than `min_samples` (the featurizer's STFT window).
    """
    recording = getattr(cut, "recording", None)
    source = recording.sources[0] if recording is not None else None
    if source is not None and source.type == "file" and not Path(source.source).is_file():
        raise ClipProblem("no such audio file")
    try:
        audio = cut.load_audio()  # (channels, samples)
    except Exception as e:  # noqa: BLE001 - soundfile, ffmpeg, lhotse and OS errors alike
        reason = " ".join(str(e).split(" [extra info]")[0].split()) or type(e).__name__
        if "diverged" in reason:  # lhotse: fewer or more samples decoded than the header declares
            reason = "it decodes to a length other than its header says; truncated or damaged?"
        raise ClipProblem(f"cannot decode audio ({reason[:200]})") from None
    audio = np.atleast_2d(np.asarray(audio))
    if audio.shape[1] == 0:
        raise ClipProblem("audio is empty")
    try:
        _check_finite(Path(""), audio.T)  # (samples, channels)
    except DataError as e:
        raise ClipProblem(str(e).removeprefix(".: ")) from None
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is caught by the feature check
        wave = audio.mean(axis=0) if audio.shape[0] > 1 else audio[0]
        if cut.sampling_rate != SAMPLE_RATE:
            wave = soxr.resample(wave, cut.sampling_rate, SAMPLE_RATE, quality="HQ")
    if len(wave) < min_samples:
        raise ClipProblem(f"{len(wave):,} samples ({len(wave) / SAMPLE_RATE * 1000:.1f} ms) is shorter than the STFT "
                          f"window of {min_samples:,} samples; expected a longer clip")
    return np.ascontiguousarray(wave, dtype=np.float32)


def transcript(cut: Cut) -> str:
    """The cut's text: its one supervision's (the manifest readers give every cut exactly one)."""
    return cut.supervisions[0].text if cut.supervisions else ""


def with_text(cut: Cut, text: str) -> Cut:
    """A copy of `cut` whose supervision says `text`."""
    return fastcopy(cut, supervisions=[fastcopy(cut.supervisions[0], text=text)])


# ---------------------------------------------------------------- the dataset


class CutDataset(Dataset):
    """A batch of cuts (a CutSet from a sampler) → a `Batch`; runs in DataLoader workers.

    `augment(cut, epoch) -> cut` changes the audio before it is read (speed, noise, ...);
    `frames_from(cut) -> (T, D)` gives cached encoder frames instead of audio (the Batch is then
    `encoded`); `feature_augment(features (C, L), cut id, epoch) -> (C, L)` masks features, or
    cached frames as (D, T) (SpecAugment, seeded per clip and epoch).
    The index is a CutSet, or (CutSet, epoch) from `WithEpoch`: augment gets that epoch plus the
    cut's pass in an endless mixture (custom["pass"]).
    `speech_gate(samples) -> bool` (16 kHz mono float32; `macasr.infer.segment.SpeechGate`) leaves
    out clips without speech as `NoSpeech` (not featurized, not decoded); with
    `decode_without_speech` they are decoded all the same and only flagged (`Example.no_speech`),
    so eval can count what a model says on them.
    """

    def __init__(
        self, featurizer: Callable[[Any], torch.Tensor], tokenize: Callable[[str], list[int]] | None = None, *,
        augment: Callable[[Cut, int], Cut] | None = None, frames_from: Callable[[Cut], torch.Tensor] | None = None,
        feature_augment: Callable[[torch.Tensor, str, int], torch.Tensor] | None = None,
        speech_gate: Callable[[np.ndarray], bool] | None = None, decode_without_speech: bool = False,
    ) -> None:
        self.featurizer = featurizer
        self.tokenize = tokenize
        self.augment = augment
        self.frames_from = frames_from
        self.feature_augment = feature_augment
        self.speech_gate = speech_gate
        self.decode_without_speech = decode_without_speech
        self.min_samples = int(getattr(featurizer, "n_fft", 0))

    def __getitem__(self, index: CutSet | tuple[CutSet, int]) -> Batch:
        cuts, epoch = index if isinstance(index, tuple) else (index, 0)
        return collate([self.example(cut, position, epoch) for position, cut in enumerate(cuts)])

    def example(self, cut: Cut, position: int = 0, epoch: int = 0) -> Example | BadClip | NoSpeech:
        """One cut → an Example, the BadClip saying why it cannot be used, or NoSpeech."""
        custom = cut.custom or {}
        if custom.get("problem"):
            return bad_clip(cut, str(custom["problem"]))
        try:
            features, seconds, encoded, speech = self._features(cut, epoch)
        except ClipProblem as e:
            return bad_clip(cut, str(e))
        if not speech and not self.decode_without_speech:
            return NoSpeech(int(custom.get("index", position)))
        text = transcript(cut)
        return Example(
            index=int(custom.get("index", position)), id=cut.id, text=text, duration=seconds, features=features,
            targets=self.tokenize(text) if self.tokenize else [], encoded=encoded, no_speech=not speech,
        )

    def _features(self, cut: Cut, epoch: int) -> tuple[torch.Tensor, float, bool, bool]:
        """→ (features (C, L), seconds, encoded, speech: False when the speech gate found none);
        ClipProblem when the clip is unusable. Without speech (and not `decode_without_speech`)
        the features are not computed: an empty tensor."""
        cut_id, epoch = cut.id, epoch + int((cut.custom or {}).get("pass", 0))
        if self.frames_from is not None:
            try:
                frames = self.frames_from(cut).T  # (D, T)
            except DataError as e:  # e.g. a cut the cache does not hold
                raise ClipProblem(str(e)) from None
            if self.feature_augment is not None:  # [data] frame_mask: SpecAugment's masks on the frames
                frames = self.feature_augment(frames, cut_id, epoch)
            return frames, cut.duration, True, True
        cut = _fit_to_file(cut)
        if self.augment is not None:  # a new draw for each epoch, and each pass of an endless mixture
            cut = self.augment(cut, epoch)
        wave = read_wave(cut, self.min_samples)
        speech = self.speech_gate is None or self.speech_gate(wave)
        if not speech and not self.decode_without_speech:
            return torch.zeros(0, 0), len(wave) / SAMPLE_RATE, False, False
        features = self.featurizer(wave)
        if not torch.isfinite(features).all():  # finite audio can still overflow (power spectrum)
            raise ClipProblem(f"its features are not finite (samples peak at {float(np.abs(wave).max()):.3g}); "
                              "expected samples of about -1 to 1")
        if self.feature_augment is not None:
            features = self.feature_augment(features, cut_id, epoch)
        return features, len(wave) / SAMPLE_RATE, False, speech


class WithEpoch:
    """A training sampler's batches as (CutSet, epoch), so workers that live across epochs
    (persistent) still augment each epoch anew. `set_epoch` goes to the sampler itself."""

    def __init__(self, sampler: DynamicBucketingSampler) -> None:
        self.sampler = sampler

    def __iter__(self) -> Iterator[tuple[CutSet, int]]:
        for cuts in self.sampler:  # iter() of a just-restored lhotse sampler keeps its position
            yield cuts, self.sampler.epoch


def build_loader(
    dataset: CutDataset, sampler: Iterable[Any], num_workers: int = 0, *, seed: int = 0,
    worker_init_fn: Callable[[int], None] | None = None,
) -> DataLoader[Batch]:
    """The sampler's batches, made into `Batch`es by `dataset` in `num_workers` processes (kept
    across epochs), each PREFETCH_BATCHES batches ahead.

    The loader draws its workers' base seed from its own generator (from `seed`), never from
    torch's global RNG: creating an iterator (a new epoch, a resume mid-epoch, a validation)
    would otherwise shift the dropout draws of training. `worker_init_fn(worker_id)` runs in
    each worker as it starts."""
    return DataLoader(
        dataset, sampler=sampler, batch_size=None, num_workers=num_workers, persistent_workers=num_workers > 0,
        prefetch_factor=PREFETCH_BATCHES if num_workers > 0 else None, pin_memory=torch.cuda.is_available(),
        generator=torch.Generator().manual_seed(seed), worker_init_fn=worker_init_fn if num_workers > 0 else None,
    )


# ---------------------------------------------------------------- training stream


class TargetText:
    """Normalize a cut's training target (`normalize_target` with a source's settings); picklable."""

    def __init__(self, mode: str, drop_annotations: bool) -> None:
        self.mode, self.drop_annotations = mode, drop_annotations

    def __call__(self, cut: Cut) -> Cut:
        from macasr.data.text import normalize_target

        return with_text(cut, normalize_target(transcript(cut), self.mode, self.drop_annotations))


class DurationRange:
    """Keep cuts with low <= duration <= high (0 = that end open)."""

    def __init__(self, low: float, high: float) -> None:
        self.low, self.high = low, high

    def __call__(self, cut: Cut) -> bool:
        return cut.duration >= self.low and (not self.high or cut.duration <= self.high)

    def __str__(self) -> str:
        return " and ".join([f"at least {self.low:g} s"] * (self.low > 0) + [f"at most {self.high:g} s"] * (self.high > 0))


class TokenLimit:
    """Keep cuts whose target (`count` tokens, end token included) fits the decoder's cap for
    their duration (`options.max_new_tokens`, from [eval] max_tokens_per_second and
    max_tokens_base: the decoder could never emit a longer one); each dropped cut is passed to
    `on_drop(cut, tokens, cap)`."""

    def __init__(self, count: Callable[[str], int], options: DecodingOptions,
                 on_drop: Callable[[Cut, int, int], None]) -> None:
        self.count, self.options, self.on_drop = count, options, on_drop

    def __call__(self, cut: Cut) -> bool:
        (cap,) = self.options.max_new_tokens([cut.duration])
        tokens = self.count(transcript(cut))
        if tokens <= cap:
            return True
        self.on_drop(cut, tokens, cap)
        return False


def chain(parts: Sequence[CutSet]) -> CutSet:
    """Several CutSets as one, read one after the other (lazily)."""
    return parts[0] if len(parts) == 1 else CutSet(LazyIteratorChain(*parts))


def target_text(cuts: CutSet, source: Any) -> CutSet:
    """`cuts` with the source's target text normalization applied as they are read.
    `source` is a `macasr.data.manifest.DataSource` (text, drop_annotations)."""
    if source.text == "keep" and not source.drop_annotations:
        return cuts
    return cuts.map(TargetText(source.text, source.drop_annotations))


def source_stream(cuts: CutSet, source: Any, min_duration: float = 0.0, max_duration: float = 0.0) -> CutSet:
    """One training source's cuts (lazy), with its target text normalization and the duration
    limits of the source and the global [data] ones (the narrower of each applies).

    `source` is a `macasr.data.manifest.DataSource` (text, drop_annotations, min/max_duration)."""
    cuts = target_text(cuts, source)
    limits = duration_range(source, min_duration, max_duration)
    return cuts.filter(limits) if limits else cuts


def duration_range(source: Any, min_duration: float = 0.0, max_duration: float = 0.0) -> DurationRange | None:
    """The narrower of a source's and the global duration limits; None when both are off."""
    low = max(source.min_duration, min_duration)
    highs = [h for h in (source.max_duration, max_duration) if h > 0]
    return DurationRange(low, min(highs) if highs else 0.0) if low > 0 or highs else None


class Endless:
    """A CutSet read over and over, each cut marked with its pass (custom["pass"], 0, 1, ...) and
    its id kept (lhotse's `repeat` renames ids, which bad-clip reports and caches go by). Ends at
    once when the CutSet is empty. Picklable."""

    def __init__(self, cuts: CutSet) -> None:
        self.cuts = cuts

    def __iter__(self) -> Iterator[Cut]:
        for number in itertools.count():
            empty = True
            for cut in self.cuts:
                empty = False
                yield fastcopy(cut, custom={**(cut.custom or {}), "pass": number})
            if empty:
                return


def mix_streams(streams: Sequence[CutSet], weights: Sequence[float], seed: int, endless: bool = False) -> CutSet:
    """One stream from several: each next cut comes from stream i with probability
    weights[i] / sum(weights) (`CutSet.mux`, seeded); each stream repeats without end (`Endless`),
    so the mixture is endless (training counts optimizer steps). A single stream is returned as is,
    or repeated without end when `endless`."""
    if len(streams) == 1:
        return CutSet(Endless(streams[0])) if endless else streams[0]
    return CutSet.mux(*(CutSet(Endless(s)) for s in streams), weights=list(weights), seed=seed)


def own_part(manifests: Iterable[str | Path], rank: int, size: int) -> tuple[int, int]:
    """The share of the training manifests rank `rank` of `size` reads: (rank, size) when there are
    several ranks and a Shar folder among them (each rank reads its own shards, and every size-th
    cut of the other manifests: `open_cuts(part=...)`), else (0, 1): every rank reads all of it
    and the sampler keeps every size-th batch (`train_sampler(rank=, world_size=)`).

    With its own part a rank's stream is endless (`mix_streams(endless=True)`) and sampled as one
    process's: the ranks' parts end at different places, and training counts optimizer steps."""
    if size > 1 and any(manifest_kind(p) == "shar" for p in manifests):
        return rank, size
    return 0, 1


class NothingToSample(DataError):
    """The stream given to `train_sampler` holds no cut (every one was filtered out)."""


def train_sampler(
    cuts: CutSet, *, max_batch_seconds: float, batch_size: int = 0, num_buckets: int = 30,
    quadratic_duration: float = 0.0, seed: int = 0, rank: int = 0, world_size: int = 1, audio_inside: bool = False,
) -> DynamicBucketingSampler:
    """lhotse's duration-bucketed sampler: batches of up to `max_batch_seconds` of audio (per rank)
    and `batch_size` cuts (0 = no cap), shuffled from `seed` per epoch (`set_epoch`), each of
    `world_size` ranks its own batches with buckets kept in step across ranks. `audio_inside`
    (cuts that carry their audio, from Shar) holds SHAR_BUFFER_CUTS cuts instead of BUFFER_CUTS.

    The bucket edges come from the first BINS_ESTIMATE_CUTS cuts (as lhotse does), with at most
    one bucket per cut; NothingToSample when there is no cut at all."""
    max_duration, max_cuts = max_batch_seconds or None, batch_size or None
    sample = list(islice(cuts, BINS_ESTIMATE_CUTS))
    if not sample:
        raise NothingToSample("no cut to sample from")
    constraint = TimeConstraint(max_duration=max_duration, max_cuts=max_cuts, quadratic_duration=quadratic_duration or None)
    buckets = min(num_buckets, len(sample))
    bins = estimate_duration_buckets(sample, num_buckets=buckets, constraint=constraint) if buckets > 1 else []
    return DynamicBucketingSampler(
        cuts, max_duration=max_duration, max_cuts=max_cuts, duration_bins=bins,
        buffer_size=SHAR_BUFFER_CUTS if audio_inside else BUFFER_CUTS,
        quadratic_duration=quadratic_duration or None, shuffle=True, seed=seed, rank=rank, world_size=world_size,
        sync_buckets=True,
    )


# ---------------------------------------------------------------- resume


def _plain(value: Any) -> Any:
    """`value` as plain Python (dict, list, str, int, float, bool, None) for a weights_only
    checkpoint; TypeError naming anything else (a new lhotse version adding objects)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"sampler state holds a {type(value).__name__}, not plain data")


def sampler_state(sampler: DynamicBucketingSampler, epoch: int, consumed: int) -> dict[str, Any]:
    """The sampler's state_dict as plain data, positioned after `consumed` batches of `epoch`.

    The DataLoader draws batches ahead of training (prefetch), so the sampler itself has gone
    further than what was trained on; the position saved is what training consumed."""
    state = sampler.state_dict()
    diagnostics = state["diagnostics"]
    diagnostics["current_epoch"] = epoch
    diagnostics["stats_per_epoch"] = {epoch: {"epoch": epoch, "kept_cuts": 0, "discarded_cuts": 0,
                                              "kept_batches": consumed, "discarded_batches": 0}}
    state["epoch"] = epoch
    return _plain(state)


def restore_sampler(sampler: DynamicBucketingSampler, state: dict[str, Any]) -> None:
    """Load `sampler_state` output: the sampler's next batch is the one after those consumed.
    ValueError when the state does not fit this sampler (other batch limits, world size or seed):
    lhotse would silently take the stored batch limits, or draw other batches."""
    settings = (("max_duration", "[data] max_batch_seconds"), ("max_cuts", "[data] batch_size"),
                ("quadratic_duration", "[data] quadratic_duration"), ("seed", "[train] seed"),
                ("world_size", "processes (world size)"))
    for key, setting in settings:
        if state.get(key) != getattr(sampler, key):
            raise ValueError(f"the data position was saved with {setting} {state.get(key) or 0:g}, "
                             f"not {getattr(sampler, key) or 0:g}")
    try:
        sampler.load_state_dict(_plain(state))  # a copy: lhotse empties the dict it loads
    except StopIteration:  # lhotse replays the batches drawn so far; the data ran out before them
        raise ValueError("the training data ends before the saved data position; it has changed since") from None
    except (AssertionError, KeyError) as e:
        raise ValueError(f"the data position does not fit this run's sampler ({type(e).__name__}: {e})") from None


# ---------------------------------------------------------------- evaluation


def indexed(cuts: Iterable[Cut]) -> Iterator[Cut]:
    """Cuts with their position in `cuts` as custom["index"], so results map back in order."""
    for i, cut in enumerate(cuts):
        yield fastcopy(cut, custom={**(cut.custom or {}), "index": i})


def eval_sampler(cuts: Sequence[Cut], batch_size: int, batch_seconds: float = 0.0) -> Iterable[CutSet]:
    """Batches longest first (memory peaks at once); one process. Each holds up to `batch_size`
    cuts or, with `batch_seconds` > 0, as many as keep the padded audio (cuts × the longest, what
    memory holds, as lhotse's max_duration counts it) within `batch_seconds`; a longer cut goes alone."""
    ordered = sorted(cuts, key=lambda c: -c.duration)
    if batch_seconds <= 0:
        return SimpleCutSampler(CutSet.from_cuts(ordered), max_cuts=batch_size, shuffle=False, rank=0, world_size=1)
    batches: list[list[Cut]] = []
    for cut in ordered:
        if batches and (len(batches[-1]) + 1) * batches[-1][0].duration <= batch_seconds:
            batches[-1].append(cut)
        else:
            batches.append([cut])
    return [CutSet.from_cuts(batch) for batch in batches]


def check_bad_clips(batch: Batch, on_bad_clip: str) -> None:
    """With on_bad_clip = "error", DataError naming the batch's first bad clip (its file and why)."""
    if on_bad_clip == "error" and batch.bad_clips:
        raise DataError(batch.bad_clips[0].line)
