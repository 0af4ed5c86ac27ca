"""Synthetic spoken-English corpus from espeak-ng, for the demo and the tests.

Why: a real ASR corpus is large and licensed; the demo and the tests need one that builds offline
in seconds and whose every clip has an exact transcript. espeak-ng (shipped as a wheel by
`espeakng-loader`) is driven through `ctypes`, so no system package is needed.

espeak keeps hidden state between utterances (pitch flutter, wave phase), so the same text can
come out a few samples different depending on what was spoken before. `build_corpus` therefore
synthesizes fixed chunks of clips, each in a fresh `python -c` worker: the same seed gives
byte-identical WAVs whatever the calling process did before. `synthesize` alone cannot promise that.
"""

from __future__ import annotations

import ctypes
import io
import json
import os
import queue
import random
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from macasr.errors import DataError

SAMPLE_RATE = 16_000  # Hz, rate of the WAV files written
TRIM_PAD_S = 0.1  # seconds of silence before and after the speech (espeak's own is trimmed first)
SILENCE_REL = 0.01  # fraction of the clip's peak below which a sample counts as silence
RATE_WPM = (140, 200)  # words per minute, inclusive range drawn per clip
PITCH = (30, 70)  # espeak base pitch (0-100), inclusive range drawn per clip
CHUNK_CLIPS = 100  # clips per worker process; fixed so output never depends on the CPU count
MAX_WORKERS = 8  # processes
_MAX_MISSES = 2_000  # consecutive duplicate draws after which the grammar counts as exhausted
_INSTALL_HINT = "pip install 'macasr[demo]'"

# Voices are "LANGUAGE+VARIANT" (espeak-ng's voices/!v/VARIANT; no variant = the language's own).
# The held-out voices use variants training never hears, half of them also accents it never
# hears (Lancashire and Welsh English), so `test_unseen_voice` measures how well the model copes
# with new talkers: new accents, new timbres, whispered and creaky speech. Training keeps ten
# voices: more variety left the demo's tiny model far from converged in its time budget (measured
# after about 50,000 training clips: 12 voices test WER 21 %, 20 voices 9 %, all 162 accent ×
# variant pairs 13 %, against 3.4 % with these ten), so docs/data.md shows what augmentation adds.
TRAIN_VOICES: tuple[str, ...] = (
    "en-us", "en-us+f2", "en-us+m3", "en+m1", "en+f4",
    "en-gb-scotland+m4", "en-gb-x-rp+f1", "en-us-nyc+m6", "en+klatt", "en-029+m2",
)
TRAIN_ACCENTS: tuple[str, ...] = tuple(dict.fromkeys(v.partition("+")[0] for v in TRAIN_VOICES))
UNSEEN_VOICES: tuple[str, ...] = (
    "en-gb-x-gbclan+f5", "en-gb-x-gbcwmd+m7", "en-gb-x-gbcwmd+grandma",  # new accent and timbre
    "en-us+whisper", "en-gb-x-rp+whisperf",  # whispered
    "en-us-nyc+croak",  # creaky
)

# ---------------------------------------------------------------- grammar
_WORDS: dict[str, tuple[str, ...]] = {
    "colour": ("red", "blue", "green", "yellow", "black", "white", "brown", "purple"),
    "qual": ("lazy", "quick", "happy", "little", "big", "old", "young", "clever", "sleepy", "noisy"),
    "animal": ("fox", "dog", "cat", "bird", "horse", "rabbit", "mouse", "duck"),
    "moves": ("jumps", "runs", "walks", "looks", "flies"),
    "prep": ("over", "under", "near", "behind"),
    "thing": ("fence", "table", "box", "house", "tree", "bridge", "wall", "door"),
    "name": ("john", "mary", "peter", "susan", "david", "anna", "tom", "lucy", "james", "emma"),
    "number": ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
               "eleven", "twelve"),
    "many": ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "twenty"),
    "day": ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"),
    "place": ("school", "park", "station", "market", "library", "office", "beach", "hospital"),
    "fruit": ("apples", "oranges", "bananas", "grapes", "pears", "lemons", "cherries"),
    "pronoun": ("we", "they", "i", "you"),
    "did": ("found", "painted", "cleaned", "moved", "bought", "sold", "opened", "lost"),
    "do": ("open", "move", "paint", "clean", "touch", "close"),
    "vehicle": ("car", "bus", "train", "boat", "bike", "truck"),
    "vehicles": ("cars", "buses", "trains", "boats", "bikes", "trucks"),
    "state": ("fast", "slow", "new", "late", "early", "clean", "broken", "ready"),
    "time": ("morning", "afternoon", "evening", "night"),
    "side": ("left", "right"),
}
_PATTERNS: tuple[str, ...] = (
    "the {qual} {animal} {moves} {prep} the {colour} {thing}",
    "please call {name} at {number}",
    "{pronoun} have {many} {colour} {fruit}",
    "{name} went to the {place} on {day}",
    "meet me at the {place} at {number}",
    "the {colour} {vehicle} is {state}",
    "{name} and {name} {did} the {colour} {thing}",
    "how many {fruit} did {name} buy",
    "the {place} opens at {number} in the {time}",
    "see you on {day} {time}",
    "turn {side} at the {colour} {thing}",
    "{name} lives near the {place}",
    "do not {do} the {qual} {thing}",
    "put the {fruit} in the {colour} {thing}",
    "{name} saw {many} {colour} {vehicles} on {day}",
    "the {animal} is {prep} the {thing}",
)
VOCABULARY: frozenset[str] = frozenset(
    w for p in _PATTERNS for w in p.split() if not w.startswith("{")
) | frozenset(w for words in _WORDS.values() for w in words)


def _expand(pattern: str, rng: random.Random) -> str:
    """Fill every {slot} of `pattern`; a class used twice (two names) gets two different words."""
    out: list[str] = []
    for token in pattern.split():
        if token.startswith("{"):
            choices = [w for w in _WORDS[token[1:-1]] if w not in out]
            out.append(rng.choice(choices))
        else:
            out.append(token)
    return " ".join(out)


def make_sentences(rng: random.Random, n: int, exclude: set[str] = frozenset()) -> list[str]:
    """n distinct sentences (lower-case words, no punctuation) from a small grammar, none in `exclude`.

    Only if the grammar runs out of new sentences are already-drawn ones repeated (never excluded ones).
    """
    seen: set[str] = set()
    out: list[str] = []
    misses = 0
    while len(out) < n and misses < _MAX_MISSES:
        s = _expand(rng.choice(_PATTERNS), rng)
        if s in seen or s in exclude:
            misses += 1
            continue
        misses = 0
        seen.add(s)
        out.append(s)
    if not out and n > 0:
        raise DataError(f"the sentence grammar has no sentence left outside the {len(exclude)} excluded")
    return out + [rng.choice(out) for _ in range(n - len(out))]


# ---------------------------------------------------------------- espeak via ctypes
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_BUFFER_MS = 500  # length of the chunks espeak hands the callback, milliseconds
_RATE, _PITCH = 1, 3  # espeak_PARAMETER ids
_POS_CHARACTER, _CHARS_UTF8 = 1, 1
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class _Espeak:
    """One initialised libespeak-ng; the library is process-global, so use it under `_LOCK`."""

    def __init__(self) -> None:
        try:
            import espeakng_loader

            self.data_path = Path(espeakng_loader.get_data_path())
            lib = ctypes.CDLL(espeakng_loader.get_library_path())
        except (ImportError, OSError, RuntimeError) as e:
            raise DataError(f"cannot load espeak-ng ({e}); run: {_INSTALL_HINT}") from None
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                     ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        self.rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, _BUFFER_MS,
                                          str(self.data_path).encode(), _INITIALIZE_DONT_EXIT)
        if self.rate <= 0:
            raise DataError(f"espeak-ng failed to initialise from {self.data_path}; run: {_INSTALL_HINT}")
        self.chunks: list[np.ndarray] = []
        self.callback = _CALLBACK(self._collect)  # keep a reference: espeak holds a raw pointer
        lib.espeak_SetSynthCallback(self.callback)
        self.seed = getattr(lib, "espeak_ng_SetRandSeed", None)
        self.lib = lib

    def _collect(self, wav: ctypes.POINTER(ctypes.c_short), n: int, _events: int) -> int:
        if wav and n > 0:
            self.chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0  # 0 = carry on synthesizing

    def _set_voice(self, voice: str) -> None:
        variant = voice.partition("+")[2]  # espeak silently ignores an unknown variant: check it
        known = not variant or (self.data_path / "voices" / "!v" / variant).is_file()
        if not known or self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise DataError(f"espeak-ng has no voice {voice!r}; use a language like 'en-us' plus an "
                            f"optional variant from {self.data_path / 'voices' / '!v'}, e.g. 'en-us+f3'")

    def speak(self, text: str, voice: str, rate_wpm: int, pitch: int) -> np.ndarray:
        """int16 samples at `self.rate` Hz."""
        self._set_voice(voice)
        self.lib.espeak_SetParameter(_RATE, rate_wpm, 0)
        self.lib.espeak_SetParameter(_PITCH, pitch, 0)
        if self.seed is not None:
            self.seed(0)
        self.chunks = []
        buf = text.encode() + b"\0"
        if self.lib.espeak_Synth(buf, len(buf), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None) != 0:
            raise DataError(f"espeak-ng failed to synthesize {text!r}")
        self.lib.espeak_Synchronize()
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int16)


_LOCK = threading.Lock()
_ENGINE: _Espeak | None = None


def _engine() -> _Espeak:
    """The process's espeak instance, initialised on first use."""
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = _Espeak()
    return _ENGINE


def _trim(x: np.ndarray, sr: int) -> np.ndarray:
    """Cut leading/trailing silence and pad with exactly TRIM_PAD_S of zeros on each side."""
    loud = np.flatnonzero(np.abs(x) > SILENCE_REL * float(np.abs(x).max(initial=0.0)))
    if loud.size == 0:
        return x
    pad = int(TRIM_PAD_S * sr)
    return np.pad(x[loud[0]: loud[-1] + 1], pad)


def synthesize(text: str, voice: str, rate_wpm: int = 175, pitch: int = 50) -> np.ndarray:
    """float32 mono waveform at 16 kHz (espeak's 22.05 kHz output resampled with soxr),
    leading/trailing silence trimmed to ~0.1 s. Raises DataError for an unknown voice."""
    with _LOCK:
        engine = _engine()
        raw = engine.speak(text, voice, rate_wpm, pitch)
    if raw.size == 0:
        raise DataError(f"espeak-ng produced no audio for {text!r} with voice {voice!r}")
    x = soxr.resample(raw.astype(np.float32) / 32768.0, engine.rate, SAMPLE_RATE, quality="HQ")
    return _trim(np.clip(x, -1.0, 32767 / 32768), SAMPLE_RATE).astype(np.float32)


# ---------------------------------------------------------------- corpus
_SPLITS = ("train", "valid", "test", "test_unseen_voice")
_Job = tuple[str, str, str, int, int]  # (wav path, text, voice, rate_wpm, pitch)
_ROOT = str(Path(__file__).resolve().parents[2])  # folder holding the macasr package, for workers
_WORKER_CODE = "from macasr.data.synth import _worker_main; _worker_main()"


def _worker_main() -> None:
    """Child process: read a JSON list of jobs on stdin, write each WAV in order, print its length."""
    try:
        for path, text, voice, rate_wpm, pitch in json.load(sys.stdin):
            audio = synthesize(text, voice, rate_wpm, pitch)
            buf = io.BytesIO()  # one write() per file: libsndfile's own small writes are slower
            sf.write(buf, audio, SAMPLE_RATE, subtype="PCM_16", format="WAV")
            Path(path).write_bytes(buf.getvalue())
            sys.stdout.write(f"{len(audio)}\n")
            sys.stdout.flush()
    except DataError as e:
        sys.exit(str(e))  # one line on stderr, exit status 1


def _run_chunk(chunk: list[_Job], ticks: queue.Queue[int]) -> list[int]:
    """Synthesize `chunk` in a fresh interpreter (fresh espeak state); put 1 on `ticks` per clip."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (_ROOT, os.environ.get("PYTHONPATH"))))}
    proc = subprocess.Popen([sys.executable, "-c", _WORKER_CODE], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdin and proc.stdout and proc.stderr
    proc.stdin.write(json.dumps(chunk))
    proc.stdin.close()
    lengths = []
    for line in proc.stdout:
        lengths.append(int(line))
        ticks.put(1)
    err = proc.stderr.read().strip().splitlines()
    if proc.wait() != 0 or len(lengths) != len(chunk):
        raise DataError(f"espeak worker failed: {err[-1] if err else f'exit code {proc.returncode}'}")
    return lengths


def _run_jobs(jobs: list[_Job], progress: Callable[[int, int], None] | None) -> list[int]:
    """Run `jobs` in worker processes, CHUNK_CLIPS per process; return sample counts in job order."""
    chunks = [jobs[i: i + CHUNK_CLIPS] for i in range(0, len(jobs), CHUNK_CLIPS)]
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    ticks: queue.Queue[int] = queue.Queue()
    done = 0
    with ThreadPoolExecutor(max(1, min(cpus, MAX_WORKERS, len(chunks)))) as pool:
        futures = [pool.submit(_run_chunk, chunk, ticks) for chunk in chunks]
        while done < len(jobs):
            failed = next((f for f in futures if f.done() and f.exception()), None)
            if failed is not None:
                pool.shutdown(cancel_futures=True)
                raise failed.exception()  # type: ignore[misc]
            try:
                done += ticks.get(timeout=0.05)
            except queue.Empty:
                continue
            if progress is not None:
                progress(done, len(jobs))
        return [n for f in futures for n in f.result()]


def _draw_texts(rng: random.Random, counts: dict[str, int]) -> dict[str, list[str]]:
    """Held-out splits first, mutually disjoint; train avoids all of them."""
    texts: dict[str, list[str]] = {}
    held: set[str] = set()
    for split in _SPLITS[1:] + _SPLITS[:1]:
        texts[split] = make_sentences(rng, counts[split], exclude=held)
        if split != "train":
            held.update(texts[split])
    return texts


def _voice(split: str, number: int, rng: random.Random) -> str:
    """The voice of clip `number` (from 1) of `split`: the held-out voices take turns, so each
    has an equal share of `test_unseen_voice`; other splits draw from TRAIN_VOICES."""
    if split == "test_unseen_voice":
        return UNSEEN_VOICES[(number - 1) % len(UNSEEN_VOICES)]
    return rng.choice(TRAIN_VOICES)


def build_corpus(out_dir: Path, *, n_train: int = 1200, n_valid: int = 100, n_test: int = 200,
                 n_unseen: int = 200, seed: int = 0,
                 progress: Callable[[int, int], None] | None = None) -> dict[str, Path]:
    """Writes out_dir/audio/<split>/<id>.wav (16 kHz mono PCM_16) and out_dir/<split>.jsonl for
    split in train, valid, test, test_unseen_voice; each row names its voice as `speaker`.
    Returns {split: manifest path}."""
    out_dir = Path(out_dir).resolve()
    manifests = {split: out_dir / f"{split}.jsonl" for split in _SPLITS}
    params = {"n_train": n_train, "n_valid": n_valid, "n_test": n_test, "n_unseen": n_unseen, "seed": seed,
              "voices": [list(TRAIN_VOICES), list(UNSEEN_VOICES)]}  # a new voice list rebuilds the corpus
    marker = out_dir / ".complete"
    if marker.is_file() and all(p.is_file() for p in manifests.values()):
        try:
            if json.loads(marker.read_text()) == params:
                return manifests
        except json.JSONDecodeError:
            pass
    with _LOCK:
        _engine()  # fail early, in this process, with the install hint
    marker.unlink(missing_ok=True)
    counts = dict(zip(_SPLITS, (n_train, n_valid, n_test, n_unseen)))
    rng = random.Random(seed)
    texts = _draw_texts(rng, counts)
    splits: list[str] = []
    jobs: list[_Job] = []  # the WAV path is absolute; the manifest keeps it relative to out_dir
    for split in _SPLITS:
        shutil.rmtree(out_dir / "audio" / split, ignore_errors=True)
        (out_dir / "audio" / split).mkdir(parents=True)
        for i, text in enumerate(texts[split], start=1):
            wav = str(out_dir / "audio" / split / f"{i:06d}.wav")
            jobs.append((wav, text, _voice(split, i, rng), rng.randint(*RATE_WPM), rng.randint(*PITCH)))
            splits.append(split)
    lengths = _run_jobs(jobs, progress)
    lines: dict[str, list[str]] = {split: [] for split in _SPLITS}
    for split, (wav, text, voice, _, _), n in zip(splits, jobs, lengths):
        rel = Path(wav).relative_to(out_dir).as_posix()
        row = {"id": Path(wav).stem, "audio": rel, "text": text, "duration": round(n / SAMPLE_RATE, 3), "speaker": voice}
        lines[split].append(json.dumps(row) + "\n")
    for split, path in manifests.items():
        path.write_text("".join(lines[split]))
    marker.write_text(json.dumps(params))
    return manifests
