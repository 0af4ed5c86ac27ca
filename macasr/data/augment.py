"""Training-time augmentation: waveform augmentation of cuts (all off by default) and SpecAugment.

Waveform augmentation makes one model hear the conditions its corpora do not share: speed
perturbation (Ko et al., 2015), additive noise (e.g. MUSAN) at a random SNR, reverberation with
recorded room impulse responses, telephone-band simulation (8 kHz, optionally G.711 μ-law), and
gain. Each is built from lhotse's lazy cut operations (`perturb_speed`, `reverb_rir`, `mix`) or
lhotse-style transforms (macasr.data.transforms), so a cut is changed only when its audio is
loaded, in a DataLoader worker. Every draw comes from (seed, epoch, cut id): a clip is augmented
the same way whichever worker reads it, and differently each epoch. docs/augmentation.md says
which corpus each augmentation suits.

SpecAugment (Park et al., 2019) masks random frequency bands and time spans of the log-mel
features, so the model cannot lean on any one band or instant; it is the cheapest guard against
over-fitting the speakers seen in training. Masks are filled with the clip's mean feature.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

from macasr.errors import ConfigError, DataError
from macasr.registry import option

if TYPE_CHECKING:
    import torch
    from lhotse.cut import Cut

# The [10, 20] dB range icefall's recipes mix MUSAN at (CutMix(..., snr=(10, 20))).
DEFAULT_NOISE_SNR = [10.0, 20.0]
NOISE_EDGE = 0.05  # s: noise pieces stop this close to the clip's end (lhotse's CutSet.mix does the same)


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """`[augment]`: waveform augmentation of training clips. Each one is on when its `*_prob` > 0."""

    speed_prob: float = option(0.0, "Probability that a training clip is speed-perturbed (0 = off); the factor is drawn from speed_factors.")
    speed_factors: list[float] = option([0.9, 1.0, 1.1], "Speed factors drawn uniformly (Ko et al. 2015: 0.9, 1.0, 1.1); 1.1 = 10 % faster and shorter.")
    noise_prob: float = option(0.0, "Probability that noise from noise_manifest is added to a clip (0 = off).")
    noise_manifest: str = option("", "Noise clips: a lhotse RecordingSet or CutSet manifest (e.g. MUSAN from `lhotse prepare musan`), or JSON Lines with an \"audio\" field.")
    noise_snr: list[float] = option(DEFAULT_NOISE_SNR, "[min, max] signal-to-noise ratio in dB, drawn uniformly per clip.")
    rir_prob: float = option(0.0, "Probability that a clip is reverberated with a room impulse response from rir_manifest (0 = off).")
    rir_manifest: str = option("", "Room impulse responses: a lhotse RecordingSet or CutSet manifest, or JSON Lines with an \"audio\" field.")
    narrowband_prob: float = option(0.0, "Probability that a clip is passed through the 8 kHz telephone band (0 = off).")
    narrowband_mu_law: float = option(0.5, "Probability that a narrowband clip is also G.711 mu-law coded (8 bits per sample).")
    gain_prob: float = option(0.0, "Probability that a clip's level is changed by a gain drawn from gain_db (0 = off).")
    gain_db: list[float] = option([-6.0, 6.0], "[min, max] gain in dB, drawn uniformly per clip.")

    def validate(self) -> list[str]:
        problems = [f"[augment] {key}: expected a probability from 0 to 1, got {getattr(self, key)}"
                    for key in ("speed_prob", "noise_prob", "rir_prob", "narrowband_prob", "narrowband_mu_law", "gain_prob")
                    if not 0.0 <= getattr(self, key) <= 1.0]
        if self.speed_prob > 0 and not self.speed_factors:
            problems.append("[augment] speed_factors: empty, but speed_prob is on; expected factors such as [0.9, 1.0, 1.1]")
        if bad := [f for f in self.speed_factors if not 0.0 < f <= 4.0]:
            problems.append(f"[augment] speed_factors: expected factors above 0 and at most 4, got {bad}")
        for key, unit in (("noise_snr", "dB"), ("gain_db", "dB")):
            value = getattr(self, key)
            if len(value) != 2 or value[0] > value[1]:
                problems.append(f"[augment] {key}: expected [min, max] in {unit} with min <= max, got {value}")
        for kind in ("noise", "rir"):
            prob, manifest = getattr(self, f"{kind}_prob"), getattr(self, f"{kind}_manifest")
            if prob > 0 and not manifest:
                problems.append(f"[augment] {kind}_manifest: empty, but {kind}_prob = {prob}; name a manifest of "
                                f"{'noise clips' if kind == 'noise' else 'room impulse responses'}")
            if manifest and prob == 0:
                problems.append(f"[augment] {kind}_prob: 0, so {kind}_manifest is never used; "
                                f"set {kind}_prob (e.g. 0.5) or remove {kind}_manifest")
        return problems


def uses_waveform(cfg: AugmentConfig) -> bool:
    """Whether any waveform augmentation is on (it needs live audio, so no feature cache)."""
    return any(p > 0 for p in (cfg.speed_prob, cfg.noise_prob, cfg.rir_prob, cfg.narrowband_prob, cfg.gain_prob))


def _digest(seed: int, epoch: int, cut_id: str, kind: str) -> int:
    """A 64-bit number fixed by (seed, epoch, cut id, kind) in every process: a stable hash
    (Python's hash() of a str is salted per process)."""
    return int.from_bytes(hashlib.blake2b(f"{seed}\0{epoch}\0{cut_id}\0{kind}".encode(), digest_size=8).digest(), "big")


def _rng(seed: int, epoch: int, cut_id: str, kind: str) -> random.Random:
    """A generator fixed by (seed, epoch, cut id, augmentation kind) in every process; one per
    kind, so turning one augmentation on does not change the draws of another."""
    return random.Random(_digest(seed, epoch, cut_id, kind))


def clip_generator(seed: int, epoch: int, cut_id: str, kind: str) -> torch.Generator:
    """A torch CPU generator fixed by (seed, epoch, cut id, kind), like `_rng`: draws that no
    DataLoader worker, worker count or resume can shift."""
    import torch  # here, not at the top: `macasr.config` imports this module, and the CLI must start without torch

    return torch.Generator().manual_seed(_digest(seed, epoch, cut_id, kind) & (2**63 - 1))


class CutAugmenter:
    """cut, epoch → augmented cut (lazy: the audio changes when it is loaded). Picklable, so the
    dataset can call it in DataLoader workers. Order: speed → reverb → noise → gain →
    narrowband, i.e. the talker, the room, the background, the level, then the telephone line."""

    def __init__(self, cfg: AugmentConfig, seed: int, noise: list[Cut], rirs: list[Cut]) -> None:
        self.cfg = cfg
        self.seed = seed
        self.noise = noise
        self.rirs = rirs

    def __repr__(self) -> str:
        return f"CutAugmenter(seed={self.seed}, noise clips={len(self.noise)}, RIRs={len(self.rirs)}, {self.cfg})"

    def __call__(self, cut: Cut, epoch: int) -> Cut:
        if "problem" in (cut.custom or {}):  # an unreadable clip is reported by the dataset, untouched
            return cut
        cfg, draw = self.cfg, lambda kind: _rng(self.seed, epoch, cut.id, kind)
        if cfg.speed_prob > 0 and (rng := draw("speed")).random() < cfg.speed_prob:
            factor = rng.choice(cfg.speed_factors)
            cut = cut if factor == 1.0 else cut.perturb_speed(factor, affix_id=False)
        if cfg.rir_prob > 0 and (rng := draw("rir")).random() < cfg.rir_prob:
            cut = self._reverb(cut, rng)
        if cfg.noise_prob > 0 and (rng := draw("noise")).random() < cfg.noise_prob:
            cut = self._add_noise(cut, rng)
        if cfg.gain_prob > 0 and (rng := draw("gain")).random() < cfg.gain_prob:
            from lhotse.augmentation import Volume

            from macasr.data.transforms import append_transform

            cut = append_transform(cut, Volume(factor=10 ** (rng.uniform(*cfg.gain_db) / 20)))
        if cfg.narrowband_prob > 0 and (rng := draw("narrowband")).random() < cfg.narrowband_prob:
            from macasr.data.transforms import Narrowband8k, append_transform

            cut = append_transform(cut, Narrowband8k(mu_law=rng.random() < cfg.narrowband_mu_law))
        return cut

    def _reverb(self, cut: Cut, rng: random.Random) -> Cut:
        from macasr.data.transforms import resample_cut

        rir = resample_cut(rng.choice(self.rirs), cut.sampling_rate)
        return cut.reverb_rir(rir_recording=rir, affix_id=False, rir_channels=[0])

    def _add_noise(self, cut: Cut, rng: random.Random) -> Cut:
        """Mix noise over the whole clip at one SNR drawn from noise_snr: a random stretch of a
        random noise clip, followed by further clips while the noise is shorter than the cut
        (lhotse's CutSet.mix does the same for a whole CutSet)."""
        from macasr.data.transforms import resample_cut

        snr = rng.uniform(*self.cfg.noise_snr)
        mixed, covered = cut, 0.0
        while covered < cut.duration - NOISE_EDGE:
            noise = resample_cut(rng.choice(self.noise), cut.sampling_rate)
            wanted = cut.duration - covered
            if noise.duration > wanted:
                noise = noise.truncate(offset=rng.uniform(0.0, noise.duration - wanted), duration=wanted)
            mixed = mixed.mix(noise, offset_other_by=covered, snr=snr, preserve_id="left")
            covered += noise.duration
        return mixed


def build_augmenter(cfg: AugmentConfig, seed: int) -> CutAugmenter | None:
    """The augmenter `cfg` asks for (None when everything is off). Noise and RIR manifests are
    read into memory here; ConfigError for an invalid cfg, DataError for an unusable manifest."""
    if problems := cfg.validate():
        raise ConfigError(problems)
    if not uses_waveform(cfg):
        return None
    loaded: dict[str, list[Cut]] = {}
    problems = []
    for key, prob in (("noise_manifest", cfg.noise_prob), ("rir_manifest", cfg.rir_prob)):
        try:
            loaded[key] = load_clips(getattr(cfg, key), key) if prob > 0 else []
        except DataError as e:  # report both manifests' problems at once
            problems.append(str(e))
    if problems:
        raise DataError("\n".join(problems))
    return CutAugmenter(cfg, seed, loaded["noise_manifest"], loaded["rir_manifest"])


def _first_row(path: Path, key: str) -> Any:
    from macasr.data.manifest import numbered_lines

    try:
        return next((json.loads(line) for _, line in numbered_lines(path) if line.strip()), None)
    except json.JSONDecodeError as e:
        raise DataError(f"[augment] {key}: {path}: cannot read as JSON Lines ({e})") from None


def _clips_from_rows(path: Path) -> list[Cut]:
    """JSON Lines of {"audio"[, "offset", "duration"]} (relative paths from the file's folder)."""
    from lhotse import Recording

    from macasr.audio import audio_duration, seconds_problem
    from macasr.data.manifest import json_rows

    clips, problems = [], []
    for number, where, row in json_rows(path, problems):
        audio = row.get("audio") if isinstance(row, dict) else None
        if not isinstance(audio, str) or not audio.strip():
            problems.append(f"{where}: expected an object with \"audio\" naming an audio file")
            continue
        file = (path.resolve().parent / audio) if not Path(audio).is_absolute() else Path(audio)
        if not file.is_file():
            problems.append(f"{where}: {file}: no such audio file")
            continue
        try:
            seconds = audio_duration(file)  # soundfile's one-line reason; lhotse's lists every backend it tried
        except DataError as e:
            problems.append(f"{where}: {e}")
            continue
        offset, duration = row.get("offset", 0.0), row.get("duration")
        bad = [f"`{k}` = {v!r}: {p}" for k, v, zero_ok in (("offset", offset, True), ("duration", duration, False))
               if (k == "offset" or v is not None) and (p := seconds_problem(v, zero_ok=zero_ok))]
        if not bad and seconds <= 0:
            bad = [f"{file}: audio is empty"]
        elif not bad and (offset >= seconds or offset + (duration or 0.0) > seconds + 1e-3):
            bad = [f"`offset` = {offset!r}, `duration` = {duration!r}: expected a segment within the audio's {seconds:.3f} s"]
        if bad:
            problems += [f"{where}: {b}" for b in bad]
            continue
        clip = _mono(Recording.from_file(file, recording_id=f"{path.stem}-{number:06d}").to_cut())
        if offset or duration is not None:
            clip = clip.truncate(offset=float(offset), duration=None if duration is None else float(duration))
        clips.append(clip)
    if problems:
        from macasr.data.manifest import problems_error

        raise problems_error(problems, str(path))
    return clips


def _mono(clip: Cut) -> Cut:
    """Channel 0 of a clip, without transcripts or custom fields (a MixedCut would merge them in)."""
    from lhotse.utils import fastcopy

    if isinstance(clip.channel, list):
        clip = clip.with_channels(clip.channel[0])
    return fastcopy(clip, supervisions=[], custom=None)


def load_clips(path: str | Path, key: str = "manifest") -> list[Cut]:
    """Every clip of a noise or RIR manifest, in memory (such corpora are small), as mono cuts.

    Accepts a lhotse RecordingSet or CutSet manifest (.jsonl, .jsonl.gz, .json) or JSON Lines
    with an "audio" field per line. DataError naming `[augment] key` and the file when it is
    missing, of another kind, or empty."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"[augment] {key}: {path}: is a folder; expected a manifest file")
    if not path.is_file():
        raise DataError(f"[augment] {key}: {path}: no such file")
    if ".jsonl" in path.suffixes and isinstance(row := _first_row(path, key), dict) and "audio" in row:
        clips = _clips_from_rows(path)
    else:
        clips = _clips_from_lhotse(path, key)
    if not clips:
        raise DataError(f"[augment] {key}: {path} holds no clips")
    if empty := [clip.id for clip in clips if clip.duration <= 0]:
        shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5:,} more" if len(empty) > 5 else "")
        raise DataError(f"[augment] {key}: {path}: {len(empty):,} clip{'s' if len(empty) > 1 else ''} without audio (duration 0): {shown}")
    return clips


def _clips_from_lhotse(path: Path, key: str) -> list[Cut]:
    from lhotse import CutSet, RecordingSet, load_manifest

    try:
        manifest = load_manifest(path)
    except Exception as e:  # lhotse raises ValueError, KeyError, ... for a file it cannot type
        raise DataError(f"[augment] {key}: {path}: expected a lhotse RecordingSet or CutSet manifest, or JSON Lines "
                        f"with an \"audio\" field per line ({type(e).__name__}: {e})") from None
    if isinstance(manifest, RecordingSet):
        return [_mono(recording.to_cut()) for recording in manifest]
    if isinstance(manifest, CutSet):
        return [_mono(cut) for cut in manifest]
    if manifest is None:
        return []
    raise DataError(f"[augment] {key}: {path}: expected a lhotse RecordingSet or CutSet manifest, "
                    f"got a {type(manifest).__name__}")


def narrowband_copy(manifest: str | Path, out_dir: str | Path, mu_law: bool = False) -> Path:
    """A telephone-band copy of a manifest (any kind `open_cuts` reads), for a narrowband test set.

    Each clip is read as training reads audio (mono, 16 kHz), passed through the 8 kHz band and
    written as an 8 kHz WAV file, `OUT_DIR/audio/NNNNNN.wav`: 16-bit PCM, or with `mu_law` G.711
    μ-law (8 bits per sample, the format of telephone recordings). `OUT_DIR/<manifest stem>.jsonl`
    (macasr JSON Lines) keeps each clip's id, text and speaker. Returns that manifest's path;
    DataError naming the first clip that cannot be read, as a test set must be whole."""
    import numpy as np
    import soundfile as sf

    from macasr.audio import SAMPLE_RATE
    from macasr.data.loader import ClipProblem, audio_name, read_wave, transcript
    from macasr.data.manifest import manifest_stem, open_cuts, write_manifest
    from macasr.data.transforms import TELEPHONE_RATE, narrowband

    manifest, out_dir = Path(manifest), Path(out_dir)
    (out_dir / "audio").mkdir(parents=True, exist_ok=True)
    rows = []
    for number, cut in enumerate(open_cuts(manifest), start=1):
        try:
            if problem := (cut.custom or {}).get("problem"):
                raise ClipProblem(problem)
            wave = read_wave(cut)
        except ClipProblem as e:
            raise DataError(f"{audio_name(cut)}: {e} (manifest {(cut.custom or {}).get('origin', manifest)})") from None
        band = np.clip(narrowband(wave[None, :], SAMPLE_RATE)[0], -1.0, 1.0)  # a file holds [-1, 1]
        name = f"audio/{number:06d}.wav"
        sf.write(out_dir / name, band, TELEPHONE_RATE, subtype="ULAW" if mu_law else "PCM_16")
        speaker = next((s.speaker for s in cut.supervisions if s.speaker), None)
        rows.append({"id": cut.id, "audio": name, "text": transcript(cut), "duration": round(len(band) / TELEPHONE_RATE, 4)}
                    | ({"speaker": speaker} if speaker else {}))
    return write_manifest(out_dir / f"{manifest_stem(manifest)}.jsonl", rows)


FREQ_MASKS = 2  # bands per clip
FREQ_MASK_FRACTION = 0.15  # widest band, as a fraction of the bins (12 of 80, 19 of 128)
TIME_MASKS = 2  # spans per clip
TIME_MASK_FRACTION = 0.05  # longest span, as a fraction of the clip's frames


def spec_augment(features: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """features (C, L) → a masked copy (C, L); draws from `generator` (a CPU generator; None =
    torch's global RNG). Training masks come from `SpecAugment`, seeded per clip."""
    import torch

    out = features.clone()
    bins, frames = out.shape
    fill = out.mean()
    for count, size, fraction, axis in ((FREQ_MASKS, bins, FREQ_MASK_FRACTION, 0), (TIME_MASKS, frames, TIME_MASK_FRACTION, 1)):
        if axis == 0 and bins == 1:  # a waveform (HuBERT, WavLM, wav2vec2) has no frequency axis
            continue
        widest = max(1, int(size * fraction))
        for _ in range(count):
            width = int(torch.randint(0, widest + 1, (), generator=generator).item())
            start = int(torch.randint(0, max(1, size - width + 1), (), generator=generator).item())
            if axis == 0:
                out[start : start + width, :] = fill
            else:
                out[:, start : start + width] = fill
    return out


class SpecAugment:
    """The training dataset's `feature_augment`: (features (C, L), cut id, epoch) → masked copy,
    masks drawn from (seed, epoch, cut id) like the waveform augmentations, so the masks a clip
    gets do not depend on which worker reads it, how many workers there are, or a resume.
    Picklable."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def __call__(self, features: torch.Tensor, cut_id: str, epoch: int) -> torch.Tensor:
        return spec_augment(features, clip_generator(self.seed, epoch, cut_id, "spec_augment"))
