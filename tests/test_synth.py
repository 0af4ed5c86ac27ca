"""Tests for macasr.data.synth: espeak synthesis, the sentence grammar and the corpus builder."""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from macasr.data import synth
from macasr.errors import DataError

SMALL = {"n_train": 20, "n_valid": 5, "n_test": 5, "n_unseen": 7, "seed": 3}
SPLITS = ("train", "valid", "test", "test_unseen_voice")


def read_manifest(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], list[tuple[int, int]]]:
    calls: list[tuple[int, int]] = []
    out = tmp_path_factory.mktemp("corpus")
    return synth.build_corpus(out, **SMALL, progress=lambda d, n: calls.append((d, n))), calls


def test_synthesize_returns_16k_float32_mono_with_plausible_duration() -> None:
    audio = synth.synthesize("please call john at seven", "en-us")
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert 0.8 < len(audio) / synth.SAMPLE_RATE < 3.0
    assert 0.05 < np.abs(audio).max() <= 1.0
    pad = int(0.09 * synth.SAMPLE_RATE)  # ~0.1 s of silence each side, no more
    assert not audio[:pad].any() and not audio[-pad:].any()
    assert np.abs(audio[: int(0.15 * synth.SAMPLE_RATE)]).max() > 0


def test_rate_and_voice_change_the_waveform() -> None:
    text = "the red fox jumps over the lazy dog"
    slow = synth.synthesize(text, "en-us", rate_wpm=140)
    fast = synth.synthesize(text, "en-us", rate_wpm=200)
    assert len(slow) > len(fast) * 1.2
    waves = [synth.synthesize(text, v) for v in synth.TRAIN_VOICES[:3]]
    for a, b in [(waves[0], waves[1]), (waves[0], waves[2]), (waves[1], waves[2])]:
        n = min(len(a), len(b))
        assert len(a) != len(b) or not np.allclose(a[:n], b[:n], atol=1e-3)


@pytest.mark.parametrize("voice", ["xx-nonexistent", "en-us+nosuchvariant"])
def test_unknown_voice_raises(voice: str) -> None:
    with pytest.raises(DataError, match="no voice"):
        synth.synthesize("hello", voice)


def test_every_listed_voice_loads() -> None:
    for voice in (*synth.TRAIN_VOICES, *synth.UNSEEN_VOICES):
        assert synth.synthesize("hello", voice).size > 0


def test_missing_espeak_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(synth, "_ENGINE", None)
    monkeypatch.setitem(sys.modules, "espeakng_loader", None)  # import now fails
    with pytest.raises(DataError, match=r"pip install 'macasr\[demo\]'") as info:
        synth.synthesize("hello", "en-us")
    assert "\n" not in str(info.value)


def test_constants() -> None:
    assert len(synth.VOCABULARY) >= 60
    assert len(set(synth.TRAIN_VOICES)) == len(synth.TRAIN_VOICES) >= 8
    assert len(set(synth.UNSEEN_VOICES)) == len(synth.UNSEEN_VOICES) >= 4
    assert synth.SAMPLE_RATE == 16_000


def test_unseen_voices_use_variants_training_never_hears() -> None:
    trained = {voice.partition("+")[2] for voice in synth.TRAIN_VOICES}
    held_out = [voice.partition("+") for voice in synth.UNSEEN_VOICES]
    assert not {variant for _, _, variant in held_out} & trained
    assert {"whisper", "whisperf", "croak"} <= {variant for _, _, variant in held_out}  # whispered and creaky
    assert {accent for accent, _, _ in held_out} - set(synth.TRAIN_ACCENTS)  # and new accents


def test_make_sentences_distinct_in_vocabulary_and_deterministic() -> None:
    first = synth.make_sentences(random.Random(7), 300)
    assert first == synth.make_sentences(random.Random(7), 300)
    assert len(set(first)) == 300
    for s in first:
        words = s.split()
        assert 3 <= len(words) <= 9 and s == s.lower()
        assert set(words) <= synth.VOCABULARY
    others = synth.make_sentences(random.Random(8), 300, exclude=set(first))
    assert not set(others) & set(first)


def test_grammar_has_several_thousand_sentences() -> None:
    assert len(set(synth.make_sentences(random.Random(0), 5000))) == 5000


def test_corpus_manifests_and_audio(corpus: tuple[dict[str, Path], list[tuple[int, int]]]) -> None:
    manifests, _ = corpus
    assert set(manifests) == set(SPLITS)
    counts = {"train": 20, "valid": 5, "test": 5, "test_unseen_voice": 7}
    for split, path in manifests.items():
        rows = read_manifest(path)
        assert len(rows) == counts[split]
        for row in rows:
            assert set(row) == {"id", "audio", "text", "duration", "speaker"}
            assert row["audio"] == f"audio/{split}/{row['id']}.wav"
            assert row["audio"].startswith(f"audio/{split}/") and not Path(row["audio"]).is_absolute()
            info = sf.info(path.parent / row["audio"])
            assert info.samplerate == 16_000 and info.channels == 1 and info.subtype == "PCM_16"
            assert info.frames / 16_000 == pytest.approx(row["duration"], abs=1e-3)
            assert 0.5 < row["duration"] < 4.0
            assert set(row["text"].split()) <= synth.VOCABULARY


def test_corpus_splits_disjoint_and_voices(corpus: tuple[dict[str, Path], list[tuple[int, int]]]) -> None:
    manifests, _ = corpus
    rows = {split: read_manifest(path) for split, path in manifests.items()}
    texts = {split: {r["text"] for r in split_rows} for split, split_rows in rows.items()}
    assert len(texts["train"]) == 20
    for held_out in ("valid", "test", "test_unseen_voice"):
        assert not texts[held_out] & texts["train"]
    assert not texts["valid"] & texts["test"]
    unseen = [r["speaker"] for r in rows["test_unseen_voice"]]  # the held-out voices take turns
    assert unseen == [*synth.UNSEEN_VOICES, *synth.UNSEEN_VOICES][:7]
    for split in ("train", "valid", "test"):
        assert {r["speaker"] for r in rows[split]} <= set(synth.TRAIN_VOICES)


def test_corpus_progress(corpus: tuple[dict[str, Path], list[tuple[int, int]]]) -> None:
    _, calls = corpus
    assert calls[-1] == (37, 37)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_corpus_is_deterministic(tmp_path: Path, corpus: tuple[dict[str, Path], list[tuple[int, int]]]) -> None:
    manifests, _ = corpus
    synth.synthesize("something else first", "en+klatt")  # the caller's espeak state must not matter
    again = synth.build_corpus(tmp_path, **SMALL)
    for split, path in manifests.items():
        assert again[split].read_bytes() == path.read_bytes()
        for row in read_manifest(path):
            assert (tmp_path / row["audio"]).read_bytes() == (path.parent / row["audio"]).read_bytes()


def test_corpus_is_idempotent_and_rebuilds_on_new_parameters(tmp_path: Path) -> None:
    small = {**SMALL, "n_train": 4, "n_valid": 2, "n_test": 2, "n_unseen": 2}
    first = synth.build_corpus(tmp_path, **small)
    stamp = first["train"].stat().st_mtime_ns
    start = time.perf_counter()
    assert synth.build_corpus(tmp_path, **small) == first
    assert time.perf_counter() - start < 0.5
    assert first["train"].stat().st_mtime_ns == stamp
    assert json.loads((tmp_path / ".complete").read_text())["seed"] == small["seed"]
    synth.build_corpus(tmp_path, **{**small, "n_train": 3})
    assert len(read_manifest(first["train"])) == 3
    assert len(list((tmp_path / "audio" / "train").iterdir())) == 3


def test_corpus_rebuilds_when_the_voices_change(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    small = {**SMALL, "n_train": 2, "n_valid": 1, "n_test": 1, "n_unseen": 2}
    first = synth.build_corpus(tmp_path, **small)
    monkeypatch.setattr(synth, "UNSEEN_VOICES", ("en-us+m7", "en+f5"))
    synth.build_corpus(tmp_path, **small)
    assert [r["speaker"] for r in read_manifest(first["test_unseen_voice"])] == ["en-us+m7", "en+f5"]
