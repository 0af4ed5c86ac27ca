"""Voice activity detection (macasr/infer/segment.py): the Silero port, the speech gate in the
loader, and the plan that splits long audio at pauses."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import noise
from macasr import config as config_module
from macasr.audio import SAMPLE_RATE
from macasr.data.loader import CutDataset, build_loader, eval_sampler
from macasr.evaluate.run import decoding_options
from macasr.infer import segment
from macasr.infer.decode import decode_loader
from macasr.infer.inputs import file_cut
from macasr.infer.segment import Span, plan, plan_segments

PAUSE = 1.0  # seconds of silence between the sentences of the long clip
SENTENCES = ["please call john at nine", "seven green apples", "the cat sat on the mat", "hello world how are you"]


@pytest.fixture(scope="module")
def vad() -> segment.SileroVAD:
    return segment.load_vad()


@pytest.fixture(scope="module")
def spoken() -> list[np.ndarray]:
    from macasr.data import synth

    return [synth.synthesize(text, "en-us") for text in SENTENCES]


def long_clip(spoken: list[np.ndarray], repeats: int = 1) -> tuple[np.ndarray, list[Span]]:
    """The sentences `repeats` times, PAUSE apart (and PAUSE before the first) → samples and where each sentence is."""
    silence = np.zeros(int(PAUSE * SAMPLE_RATE), dtype=np.float32)
    parts, where, at = [silence], [], PAUSE
    for speech in spoken * repeats:
        parts += [speech, silence]
        where.append(Span(at, at + len(speech) / SAMPLE_RATE))
        at += len(speech) / SAMPLE_RATE + PAUSE
    return np.concatenate(parts), where


# ---------------------------------------------------------------- the model


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_the_port_finds_the_speech_silero_own_model_finds(vad: segment.SileroVAD, spoken: list[np.ndarray]) -> None:
    """The torch port of the wheel's safetensors model against the package's TorchScript model
    (a separately trained release of the same network: regions agree, probabilities need not)."""
    from silero_vad.utils_vad import get_speech_timestamps

    samples, where = long_clip(spoken[:2])
    threads = torch.get_num_threads()
    reference = torch.jit.load(str(segment.silero_folder() / "data" / "silero_vad.jit")).eval()  # the wheel's own file, in a test only
    torch.set_num_threads(threads)
    theirs = get_speech_timestamps(torch.from_numpy(samples), reference, return_seconds=True, time_resolution=3)
    ours = segment.samples_speech(vad, samples)
    assert len(ours) == len(theirs) == len(where) == 2
    for mine, other, truth in zip(ours, theirs, where):
        assert mine.start == pytest.approx(other["start"], abs=0.1) and mine.end == pytest.approx(other["end"], abs=0.1)
        assert mine.start <= truth.start + 0.1 and mine.end >= truth.end - 0.15


def test_silence_and_noise_hold_no_speech(vad: segment.SileroVAD, spoken: list[np.ndarray]) -> None:
    assert segment.samples_speech(vad, np.zeros(2 * SAMPLE_RATE, dtype=np.float32)) == []
    assert segment.samples_speech(vad, noise(2.0)) == []
    assert segment.samples_speech(vad, noise(2.0) * 5) == []  # loud white noise too
    assert len(segment.samples_speech(vad, spoken[0])) == 1


def test_pieces_of_any_length_give_the_probabilities_of_the_whole(vad: segment.SileroVAD, spoken: list[np.ndarray]) -> None:
    samples, _ = long_clip(spoken[:2])
    whole = segment.Scanner(vad)
    whole.feed(samples, last=True)
    pieces = segment.Scanner(vad)
    cuts = [0, 700, 5000, 5001, 23_456, len(samples)]  # not frame-aligned
    for a, b in zip(cuts, cuts[1:]):
        pieces.feed(samples[a:b], last=b == len(samples))
    a, b = whole.result(), pieces.result()
    assert a.num_samples == b.num_samples == len(samples)
    np.testing.assert_allclose(a.probs, b.probs, atol=1e-5)
    np.testing.assert_allclose(a.rms, b.rms, rtol=1e-5)
    assert len(a.probs) == -(-len(samples) // segment.FRAME) and len(a.rms) == -(-len(samples) // segment.ENERGY_FRAME)


def test_a_file_is_read_in_pieces(vad: segment.SileroVAD, spoken: list[np.ndarray], tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    samples, _ = long_clip(spoken[:2])
    path = tmp_path / "a.wav"
    sf.write(path, samples, SAMPLE_RATE, subtype="FLOAT")
    whole = segment.scan(file_cut(str(path), 0), vad)
    read = []
    real_read_wave = __import__("macasr.data.loader", fromlist=["read_wave"]).read_wave
    monkeypatch.setattr("macasr.data.loader.read_wave", lambda cut, *a: read.append(cut.duration) or real_read_wave(cut, *a))
    monkeypatch.setattr(segment, "PIECE_SECONDS", 1.024)  # 32 VAD frames
    in_pieces = segment.scan(file_cut(str(path), 0), vad)
    assert len(read) == -(-len(samples) // int(1.024 * SAMPLE_RATE)) and max(read) == pytest.approx(1.024)
    np.testing.assert_allclose(in_pieces.probs, whole.probs, atol=1e-5)


def test_importing_silero_keeps_the_thread_count(vad: segment.SileroVAD) -> None:
    for name in [n for n in sys.modules if n == "silero_vad" or n.startswith("silero_vad.")]:
        del sys.modules[name]  # so its model.py runs again (it calls torch.set_num_threads(1))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        segment.speech_regions(np.zeros(10, dtype=np.float32), 5120)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------- the plan


def test_regions_are_grouped_up_to_the_limit_and_split_at_pauses() -> None:
    regions = [Span(0.5, 2.0), Span(2.4, 3.8), Span(4.2, 6.0), Span(6.3, 7.0), Span(10.0, 11.0)]
    segments = plan_segments(regions, np.zeros(1200, dtype=np.float32), 12.0, max_seconds=4.0)
    assert [round(s.start, 2) for s in segments] == [0.3, 4.0, 9.8]  # up to 0.2 s of pause kept: at most half of it, within the limit
    assert [round(s.end, 2) for s in segments] == [4.0, 7.2, 11.2]
    assert all(s.duration <= 4.0 + 1e-9 for s in segments)
    joined = plan_segments([Span(0.5, 1.0), Span(3.6, 4.0)], np.zeros(500, dtype=np.float32), 5.0, max_seconds=30.0)
    assert len(joined) == 2  # 2.6 s apart: no decoding of the silence between
    close = plan_segments([Span(0.5, 1.0), Span(2.5, 4.0)], np.zeros(500, dtype=np.float32), 5.0, max_seconds=30.0)
    assert [Span(round(c.start, 2), round(c.end, 2)) for c in close] == [Span(0.3, 4.2)]


def test_a_region_too_long_is_cut_at_its_quietest_point() -> None:
    rms = np.ones(1300, dtype=np.float32)  # 13 s of 10 ms frames
    rms[725:735] = 0.01  # a 100 ms dip at 7.25-7.35 s
    rms[300:310] = 0.0  # a quieter one, but before half the limit: not allowed (segment too short)
    segments = plan_segments([Span(0.0, 13.0)], rms, 13.0, max_seconds=10.0)
    assert len(segments) == 2
    assert segments[0].start == 0.0 and segments[0].end == pytest.approx(7.3, abs=0.011)
    assert segments[1].start == segments[0].end and segments[1].end == 13.0


def test_a_long_file_is_split_in_the_pauses(vad: segment.SileroVAD, spoken: list[np.ndarray], tmp_path: Path) -> None:
    samples, where = long_clip(spoken, repeats=2)  # 8 sentences, ~20 s
    path = tmp_path / "long.wav"
    sf.write(path, samples, SAMPLE_RATE, subtype="PCM_16")
    segments = plan(file_cut(str(path), 0), 4.0, vad)
    assert all(s.duration <= 4.0 + 1e-9 for s in segments) and len(segments) >= 4
    assert all(a.end <= b.start for a, b in zip(segments, segments[1:]))
    for sentence in where:  # every sentence whole inside exactly one segment: no cut mid-word
        inside = [s for s in segments if s.start <= sentence.start + 0.05 and sentence.end - 0.05 <= s.end]
        assert len(inside) == 1, (sentence, segments)
    assert plan(file_cut(str(path), 0), 60.0, vad) == [Span(0.0, pytest.approx(len(samples) / SAMPLE_RATE))]  # fits: the whole file


def test_no_speech_plans_nothing_and_without_vad_the_whole_file(vad: segment.SileroVAD, tmp_path: Path) -> None:
    path = tmp_path / "noise.wav"
    sf.write(path, noise(3.0), SAMPLE_RATE)
    assert plan(file_cut(str(path), 0), 30.0, vad) == []
    assert plan(file_cut(str(path), 0), 30.0, None) == [Span(0.0, 3.0)]
    cut_up = plan(file_cut(str(path), 0), 1.0, None)  # no VAD, too long: cut by energy alone
    assert len(cut_up) >= 3 and all(s.duration <= 1.0 + 1e-9 for s in cut_up) and cut_up[-1].end == pytest.approx(3.0)


# ---------------------------------------------------------------- the gate in eval


def test_the_gate_leaves_clips_without_speech_undecoded(model, tiny_config, spoken: list[np.ndarray], tmp_path: Path) -> None:
    paths = []
    for name, samples in (("silence", np.zeros(SAMPLE_RATE, dtype=np.float32)), ("speech", spoken[0]), ("noise", noise(1.5))):
        paths.append(tmp_path / f"{name}.wav")
        sf.write(paths[-1], samples, SAMPLE_RATE)
    cuts = [file_cut(str(p), i) for i, p in enumerate(paths)]
    found = {}
    for vad in (True, False):
        cfg = config_module.replace(tiny_config, **{"eval.vad": vad})
        dataset = CutDataset(model.encoder.featurizer, speech_gate=segment.SpeechGate(), decode_without_speech=not vad)
        found[vad] = decode_loader(model, build_loader(dataset, eval_sampler(cuts, 2)), decoding_options(cfg), model.llm.device, "fp32")
    assert found[True].no_speech == found[False].no_speech == {0, 2}  # detected either way; only vad on leaves them out
    assert found[True].hypotheses[0] == found[True].hypotheses[2] == "" and found[True].stop_reasons[0] == "end"
    assert found[True].hypotheses[1] == found[False].hypotheses[1] != ""  # speech is decoded either way
    assert found[False].hypotheses[0] != "" and found[False].hypotheses[2] != ""  # the tiny LM's invented text


def test_max_segment_seconds_must_be_positive(tiny_config) -> None:
    from macasr.errors import ConfigError

    with pytest.raises(ConfigError, match=r"\[eval\] max_segment_seconds: must be positive, got 0"):
        config_module.from_dict({"eval": {"max_segment_seconds": 0}}, "test")


def test_eval_vad_option(tiny_config, spoken: list[np.ndarray], tmp_path: Path) -> None:
    """`macasr eval --vad on|off`: silence scored as an empty hypothesis, or decoded; either way the
    report counts it as a clip without speech, and with the VAD off the text invented on it."""
    from typer.testing import CliRunner

    from macasr.cli import app
    from macasr.model.build import build_model
    from macasr.train import checkpoint

    ckpt = checkpoint.save_checkpoint(tmp_path / "best.pt", checkpoint.model_payload(build_model(tiny_config), tiny_config))
    sf.write(tmp_path / "silence.wav", np.zeros(SAMPLE_RATE, dtype=np.float32), SAMPLE_RATE)
    manifest = tmp_path / "test.jsonl"
    manifest.write_text('{"audio": "silence.wav", "text": "hello", "duration": 1.0}\n')
    hypotheses = {}
    for vad in ("on", "off"):
        report = tmp_path / f"{vad}.json"
        result = CliRunner().invoke(app, ["eval", "--ckpt", str(ckpt), "--manifest", str(manifest), "--vad", vad, "--report", str(report)])
        assert result.exit_code == 0, result.output
        (row,) = [json.loads(line) for line in report.with_name(f"{vad}.utterances.jsonl").read_text().splitlines()]
        hypotheses[vad] = row["hypothesis"]
        assert row["no_speech"] is True
        (summary,) = json.loads(report.read_text())["datasets"].values()
        assert summary["no_speech_clips"] == 1 and summary["no_speech_outputs"] == (vad == "off")
    assert hypotheses["on"] == "" and hypotheses["off"] != ""
