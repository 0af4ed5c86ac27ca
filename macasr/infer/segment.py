"""Voice activity detection (Silero VAD) and the plan that cuts long audio into speech segments.

The VAD is Silero VAD 6 (the `silero-vad` package, MIT): its 16 kHz weights ship in the wheel as
safetensors and run here in a small torch module (`SileroVAD`, a port of the package's own
`tinygrad_model.py`), so nothing is unpickled and nothing is downloaded. Speech probabilities
come per 32 ms frame (512 samples); the package's `get_speech_timestamps_from_probs` turns them
into speech regions (threshold 0.5, pauses of 100 ms end a region, regions under 250 ms dropped,
30 ms padding: Silero's defaults).

`plan_segments` groups speech regions into segments of at most `max_seconds`, split at pauses;
a region longer than that (speech with no pause of 100 ms) is cut at its quietest 100 ms in the
second half of the allowed length (lowest mean frame RMS), never at a fixed time. `scan` reads a
cut in pieces of PIECE_SECONDS, so a 10-minute file costs a few MB of probabilities and
energies, never the whole waveform at once.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from lhotse.cut import Cut
from torch import nn

from macasr.audio import SAMPLE_RATE

FRAME = 512  # samples per speech probability at 16 kHz (Silero's window)
CONTEXT = 64  # samples of the previous frame each window also sees (Silero's context)
ENERGY_FRAME = 160  # samples per RMS value (10 ms), where a segment that must be cut is cut
CUT_SMOOTHING = 10  # energy frames averaged (100 ms) so a cut lands in a pause, not a plosive's closure
PIECE_SECONDS = 64.0  # audio read at a time by `scan` (a multiple of both frames: 64 s = 2,000 VAD frames)
SEGMENT_PAD = 0.2  # seconds of pause kept either side of a segment (at most half the pause): enough for a
# word's soft edges (Silero itself pads 30 ms); more silence than this misleads models trained on trimmed clips
JOIN_PAUSE = 2.0  # a pause longer than this always ends a segment (no decoding of long silence)
WEIGHTS = "silero_vad_16k.safetensors"


@dataclasses.dataclass(frozen=True)
class Span:
    """A stretch of audio in seconds from the start of the clip."""

    start: float
    end: float

    @property
    def duration(self) -> float:
        return self.end - self.start


# ---------------------------------------------------------------- the model


class SileroVAD(nn.Module):
    """Silero VAD 6's 16 kHz network in torch (layer names as in its safetensors file but the LSTM's).

    A window is one 512-sample frame with the 64 samples before it: (N, 576) → a learned STFT
    (258 filters = 129 bins real and imaginary, hop 128) → magnitudes → 4 convolutions down to
    one 128-vector per window → an LSTM cell across windows → a speech probability per window.
    The convolutions see one window each, so all windows of a piece run as one batch and only
    the LSTM steps frame by frame (`nn.LSTM` with the cell's weights: one call per piece)."""

    def __init__(self) -> None:
        super().__init__()
        self.stft_conv = nn.Conv1d(1, 258, kernel_size=256, stride=128, bias=False)
        self.conv1 = nn.Conv1d(129, 128, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(128, 64, kernel_size=3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(64, 64, kernel_size=3, stride=2, padding=1)
        self.conv4 = nn.Conv1d(64, 128, kernel_size=3, padding=1)
        self.lstm = nn.LSTM(128, 128, batch_first=True)  # the file's `lstm_cell`, run over a sequence
        self.final_conv = nn.Conv1d(128, 1, 1)

    def forward(self, windows: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None,
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """windows (N, CONTEXT + FRAME), consecutive → (probabilities (N,), LSTM state (h, c) each (1, 1, 128))."""
        x = nn.functional.pad(windows, (0, CONTEXT), mode="reflect").unsqueeze(1)  # (N, 1, 640)
        x = self.stft_conv(x)  # (N, 258, 4)
        x = (x[:, :129] ** 2 + x[:, 129:] ** 2).sqrt()
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            x = torch.relu(conv(x))
        features = x.squeeze(-1)  # (N, 128): one vector per window
        hidden, state = self.lstm(features.unsqueeze(0), state)  # (1, N, 128): the LSTM runs across windows
        probs = torch.sigmoid(self.final_conv(torch.relu(hidden[0]).unsqueeze(-1))).reshape(-1)
        return probs, state


def silero_folder() -> Path:
    """The installed silero_vad package's folder, found without importing it (its model.py sets
    torch to one thread for the whole process when imported)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        from macasr.errors import MacasrError

        raise MacasrError("voice activity detection needs the silero-vad package: pip install 'silero-vad>=6.2'")
    return Path(next(iter(spec.submodule_search_locations)))


def load_vad() -> SileroVAD:
    """Silero VAD with the weights from its wheel's safetensors file (no pickle, no download), in eval mode."""
    from safetensors.torch import load_file

    weights = load_file(silero_folder() / "data" / WEIGHTS)
    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):  # LSTMCell → one-layer LSTM names
        weights[f"lstm.{name}_l0"] = weights.pop(f"lstm_cell.{name}")
    model = SileroVAD()
    model.load_state_dict(weights)
    return model.eval()


@contextmanager
def one_thread() -> Iterator[None]:
    """Torch on one thread inside the block (its setting restored after). The VAD's 32 ms steps
    are too small to share: on a busy 2-core machine, 64 s of audio took 4.4 s with 2 threads and
    0.2 s with one (the reason silero_vad's own loader sets one thread for the whole process)."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def speech_regions(probs: np.ndarray, num_samples: int) -> list[Span]:
    """Per-frame speech probabilities of `num_samples` samples at 16 kHz → speech regions, by
    Silero's own `get_speech_timestamps_from_probs` with its defaults."""
    threads = torch.get_num_threads()
    try:
        from silero_vad.utils_vad import get_speech_timestamps_from_probs
    finally:
        torch.set_num_threads(threads)  # importing silero_vad sets one thread for the process
    found = get_speech_timestamps_from_probs(probs.tolist(), sampling_rate=SAMPLE_RATE, audio_length_samples=num_samples)
    return [Span(r["start"] / SAMPLE_RATE, r["end"] / SAMPLE_RATE) for r in found]


# ---------------------------------------------------------------- scanning audio


@dataclasses.dataclass
class Scan:
    """What one pass over a clip found: speech probabilities per 32 ms frame, RMS per 10 ms
    frame (float32 each, a few MB for an hour) and the clip's length in samples at 16 kHz."""

    probs: np.ndarray
    rms: np.ndarray
    num_samples: int

    @property
    def duration(self) -> float:
        return self.num_samples / SAMPLE_RATE


class Scanner:
    """Feeds 16 kHz samples in any pieces to the VAD and the energy meter, carrying the LSTM
    state and the samples of an incomplete frame from one piece to the next."""

    def __init__(self, vad: SileroVAD | None) -> None:
        self.vad = vad
        self.state: tuple[torch.Tensor, torch.Tensor] | None = None
        self.carry = np.zeros(0, dtype=np.float32)  # samples not yet in a whole VAD frame
        self.energy_carry = np.zeros(0, dtype=np.float32)  # samples not yet in a whole energy frame
        self.context = np.zeros(CONTEXT, dtype=np.float32)  # the last CONTEXT samples fed to the VAD
        self.probs: list[np.ndarray] = []
        self.rms: list[np.ndarray] = []
        self.num_samples = 0

    @torch.no_grad()
    def feed(self, samples: np.ndarray, last: bool = False) -> None:
        """Add samples; with `last`, the final incomplete frames count too (the VAD's zero-padded,
        as Silero does; the energy's over the samples there are)."""
        samples = samples.astype(np.float32, copy=False)
        self.num_samples += len(samples)
        energy = np.concatenate([self.energy_carry, samples])
        whole = len(energy) if last else len(energy) // ENERGY_FRAME * ENERGY_FRAME
        self.rms.append(_frame_rms(energy[:whole]))
        self.energy_carry = energy[whole:]
        buffer = np.concatenate([self.carry, samples])
        if last and len(buffer) % FRAME:
            buffer = np.pad(buffer, (0, FRAME - len(buffer) % FRAME))
        whole = len(buffer) // FRAME * FRAME
        if whole and self.vad is not None:
            with_context = torch.from_numpy(np.concatenate([self.context, buffer[:whole]]))
            windows = with_context.unfold(0, CONTEXT + FRAME, FRAME)  # (frames, 576): frame k and the 64 samples before it
            with one_thread():
                probs, self.state = self.vad(windows, self.state)
            self.probs.append(probs.numpy())
        if whole:
            self.context = buffer[whole - CONTEXT : whole].copy()
        self.carry = buffer[whole:].copy()

    def result(self) -> Scan:
        empty = np.zeros(0, dtype=np.float32)
        return Scan(np.concatenate(self.probs) if self.probs else empty, np.concatenate(self.rms) if self.rms else empty,
                    self.num_samples)


def _frame_rms(samples: np.ndarray) -> np.ndarray:
    """RMS of each ENERGY_FRAME samples (a last partial frame over its own samples); `samples` starts on a frame edge."""
    n = len(samples)
    padded = np.pad(samples, (0, -n % ENERGY_FRAME)).reshape(-1, ENERGY_FRAME)
    counts = np.full(len(padded), ENERGY_FRAME, dtype=np.float32)
    if n % ENERGY_FRAME:
        counts[-1] = n % ENERGY_FRAME
    return np.sqrt((padded.astype(np.float64) ** 2).sum(axis=1) / counts).astype(np.float32)


def pieces(cut: Cut, seconds: float | None = None) -> Iterator[Cut]:
    """`cut` as consecutive cuts of at most `seconds` (PIECE_SECONDS by default; the last shorter), to read one at a time."""
    seconds = seconds or PIECE_SECONDS
    offset = 0.0
    while cut.duration - offset >= 1 / cut.sampling_rate:  # a rounding remainder under one sample is no piece
        length = min(seconds, cut.duration - offset)
        yield cut.truncate(offset=offset, duration=length, preserve_id=True)
        offset += length


def scan(cut: Cut, vad: SileroVAD | None, min_samples: int = 0) -> Scan:
    """Read `cut` in pieces of PIECE_SECONDS (16 kHz mono, `macasr.data.loader.read_wave`) and
    measure speech probabilities (when `vad` is given) and energy. Raises the loader's
    ClipProblem when a piece cannot be read (missing, undecodable, non-finite samples); a clip
    shorter than `min_samples` in all is one too."""
    from macasr.data.loader import ClipProblem, _fit_to_file, read_wave

    scanner = Scanner(vad)
    parts = list(pieces(_fit_to_file(cut)))  # cuts only, no audio: a few per hour
    for number, piece in enumerate(parts):
        scanner.feed(read_wave(piece), last=number == len(parts) - 1)
    if scanner.num_samples < min_samples:
        raise ClipProblem(f"{scanner.num_samples:,} samples ({scanner.num_samples / SAMPLE_RATE * 1000:.1f} ms) is "
                          f"shorter than the STFT window of {min_samples:,} samples; expected a longer clip")
    return scanner.result()


def samples_speech(vad: SileroVAD, samples: np.ndarray) -> list[Span]:
    """Speech regions of 16 kHz mono float32 samples (the whole array at once: for clips)."""
    scanner = Scanner(vad)
    scanner.feed(samples, last=True)
    found = scanner.result()
    return speech_regions(found.probs, found.num_samples)


class SpeechGate:
    """`gate(samples) -> bool`: does 16 kHz mono audio hold speech by the VAD? For the loader's
    dataset (picklable: each DataLoader worker loads its own copy of the 1 MB model when first used)."""

    def __init__(self) -> None:
        self.vad: SileroVAD | None = None

    def __call__(self, samples: np.ndarray) -> bool:
        if self.vad is None:
            self.vad = load_vad()
        return bool(samples_speech(self.vad, samples))

    def __getstate__(self) -> dict[str, object]:
        return {"vad": None}


# ---------------------------------------------------------------- planning segments


def plan_segments(regions: list[Span], rms: np.ndarray, duration: float, max_seconds: float) -> list[Span]:
    """Speech regions (in order) → segments of at most `max_seconds` to decode, in order.

    Consecutive regions share a segment while it stays within `max_seconds` and the pause between
    them is at most JOIN_PAUSE; so segments end in pauses. A region longer than `max_seconds` is
    first cut where it is quietest (`_cut_long`). Each segment keeps up to SEGMENT_PAD seconds of
    the pause either side (at most half of it, and within `max_seconds` and the clip)."""
    parts = [piece for region in regions for piece in _cut_long(region, rms, max_seconds)]
    groups: list[Span] = []
    for part in parts:
        if groups and part.end - groups[-1].start <= max_seconds and part.start - groups[-1].end <= JOIN_PAUSE:
            groups[-1] = Span(groups[-1].start, part.end)
        else:
            groups.append(part)
    padded = []
    for k, group in enumerate(groups):
        before = group.start - (groups[k - 1].end if k else 0.0)
        after = (groups[k + 1].start if k + 1 < len(groups) else duration) - group.end
        room = max(0.0, max_seconds - group.duration)
        pad_before = min(SEGMENT_PAD, before / 2 if k else before, room / 2)
        pad_after = min(SEGMENT_PAD, after / 2 if k + 1 < len(groups) else after, room - pad_before)
        padded.append(Span(round(group.start - pad_before, 3), round(group.end + pad_after, 3)))
    return padded


def _cut_long(region: Span, rms: np.ndarray, max_seconds: float) -> list[Span]:
    """A region → pieces of at most `max_seconds`: while too long, cut at the quietest
    CUT_SMOOTHING frames (mean RMS) between half of `max_seconds` and all of it from its start."""
    frame = ENERGY_FRAME / SAMPLE_RATE
    out = []
    start = region.start
    while region.end - start > max_seconds:
        low, high = int(np.ceil((start + max_seconds / 2) / frame)), int((start + max_seconds) / frame)
        energy = rms[low:high]
        if len(energy) < CUT_SMOOTHING:  # max_seconds shorter than the smoothing: cut at the limit
            cut = start + max_seconds
        else:
            smooth = np.convolve(energy, np.ones(CUT_SMOOTHING) / CUT_SMOOTHING, mode="valid")
            cut = (low + int(np.argmin(smooth)) + CUT_SMOOTHING / 2) * frame  # the middle of the quietest window
        out.append(Span(start, cut))
        start = cut
    out.append(Span(start, region.end))
    return out


def plan(cut: Cut, max_seconds: float, vad: SileroVAD | None, min_samples: int = 0) -> list[Span]:
    """The segments of `cut` to decode (seconds from its start; [] when the VAD finds no speech).

    With `vad`: the clip's speech regions grouped by `plan_segments`, except that a clip of at
    most `max_seconds` with any speech is one segment, the whole clip (decoded as `macasr eval`
    decodes it). Without: the whole clip, cut at its quietest points when longer than `max_seconds`.
    Raises the loader's ClipProblem when the audio cannot be read."""
    if vad is None and cut.duration <= max_seconds:
        return [Span(0.0, cut.duration)]  # nothing to measure: the loader reads (and checks) it when decoding
    found = scan(cut, vad, min_samples)
    if vad is None:
        return plan_segments([Span(0.0, found.duration)], found.rms, found.duration, max_seconds)
    regions = speech_regions(found.probs, found.num_samples)
    if not regions:
        return []
    if found.duration <= max_seconds:
        return [Span(0.0, cut.duration)]
    return plan_segments(regions, found.rms, found.duration, max_seconds)
