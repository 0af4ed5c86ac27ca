"""`macasr transcribe` and the Python API: inputs of every kind, the VAD's empty transcripts,
long audio split at pauses and stitched in order, output formats and files, written as they come."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
from typer.testing import CliRunner

from conftest import noise
from macasr import config as config_module
from macasr.audio import SAMPLE_RATE
from macasr.cli import app
from macasr.infer import transcribe as transcribe_module
from macasr.infer.inputs import Source, output_names
from macasr.infer.transcribe import Transcriber
from macasr.model.build import build_model
from macasr.train import checkpoint

runner = CliRunner()
PAUSE = 1.0
MAX = 4.0  # seconds per segment in these tests (30 by default): keeps the long clip short


@pytest.fixture(scope="module")
def spoken() -> list[np.ndarray]:
    from macasr.data import synth

    return [synth.synthesize(text, "en-us") for text in ["please call john at nine", "seven green apples", "the cat sat on the mat"]]


@pytest.fixture(scope="module")
def ckpt(tiny_config, tmp_path_factory) -> Path:
    cfg = config_module.replace(tiny_config, **{"eval.max_segment_seconds": MAX})
    return checkpoint.save_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt", checkpoint.model_payload(build_model(cfg), cfg))


@pytest.fixture(scope="module")
def transcriber(ckpt: Path) -> Transcriber:
    return Transcriber.from_checkpoint(ckpt, device="cpu")


@pytest.fixture(scope="module")
def files(spoken: list[np.ndarray], tmp_path_factory) -> dict[str, Path]:
    """A short spoken clip, a long one (the sentences twice, PAUSE apart: ~14 s), silence and noise."""
    folder = tmp_path_factory.mktemp("audio")
    silence = np.zeros(int(PAUSE * SAMPLE_RATE), dtype=np.float32)
    audio = {"speech": spoken[0], "long": np.concatenate([silence, *(x for s in spoken * 2 for x in (s, silence))]),
             "silence": np.zeros(2 * SAMPLE_RATE, dtype=np.float32), "noise": noise(2.0)}
    paths = {name: folder / f"{name}.wav" for name in audio}
    for name, samples in audio.items():
        sf.write(paths[name], samples, SAMPLE_RATE, subtype="FLOAT")
    return paths


def invoke(*args: str | Path):
    return runner.invoke(app, ["transcribe", *map(str, args)])


# ---------------------------------------------------------------- no speech


@pytest.mark.parametrize("kind", ["silence", "noise"])
def test_no_speech_gives_an_empty_transcript_unless_the_vad_is_off(ckpt: Path, files: dict[str, Path], kind: str) -> None:
    on = invoke(files[kind], "--ckpt", ckpt, "--format", "json")
    assert on.exit_code == 0, on.output
    (row,) = [json.loads(line) for line in on.stdout.splitlines()]
    assert row["text"] == "" and row["segments"] == [] and row["stop"] is None and "error" not in row
    off = invoke(files[kind], "--ckpt", ckpt, "--format", "json", "--vad", "off")
    (row,) = [json.loads(line) for line in off.stdout.splitlines()]
    assert row["text"] != "" and row["stop"] in ("repeat", "max_tokens", "end")  # the tiny LM invents text
    assert row["segments"] == [{"start": 0.0, "end": 2.0, "text": row["text"], "stop": row["stop"]}]


def test_the_python_api_takes_arrays_and_says_no_speech(transcriber: Transcriber, spoken: list[np.ndarray], files: dict[str, Path]) -> None:
    speech = spoken[0]
    stereo_44k = np.stack([soxr.resample(speech, SAMPLE_RATE, 44_100)] * 2, axis=1)
    results = transcriber.transcribe([files["speech"], (speech, SAMPLE_RATE), (stereo_44k, 44_100), (np.zeros(16_000), 16_000),
                                      (np.zeros((0,)), 16_000), "nothing.wav"])
    from_file, from_array, resampled, silent, empty, missing = results
    assert from_file.text and from_file.text == from_array.text == resampled.text  # the file's samples, read alike
    assert from_array.path == "<array 1>" and from_array.segments[0].start == 0.0
    assert from_array.segments[0].end == pytest.approx(len(speech) / SAMPLE_RATE, abs=1e-3)
    assert silent.text == "" and silent.segments == () and silent.error is None
    assert empty.text is None and "expected samples as a non-empty" in empty.error and empty.error.startswith("<array 4>")
    assert missing.text is None and missing.error == "nothing.wav: no such audio file"


def test_the_python_api_takes_channels_first_arrays_and_one_path_alone(transcriber: Transcriber, spoken: list[np.ndarray],
                                                                       files: dict[str, Path]) -> None:
    """(channels, samples) as torchaudio gives is read like (samples, channels); a str is one input."""
    stereo = np.stack([spoken[0]] * 2, axis=1)  # (samples, 2)
    as_soundfile, as_torchaudio, odd = transcriber.transcribe([(stereo, SAMPLE_RATE), (torch.from_numpy(stereo.T.copy()), SAMPLE_RATE),
                                                               (np.zeros((3, 3, 3)), SAMPLE_RATE)])
    assert as_soundfile.text and as_torchaudio.text == as_soundfile.text and as_torchaudio.error is None
    assert odd.text is None and odd.error.startswith("<array 2>: ")  # returned, not raised
    (alone,) = transcriber.transcribe(str(files["speech"]))
    assert alone.path == str(files["speech"]) and alone.text == as_soundfile.text


# ---------------------------------------------------------------- long audio


def test_long_audio_is_split_at_pauses_and_stitched_in_order(transcriber: Transcriber, files: dict[str, Path],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Each segment's text is what decoding that stretch alone gives, in time order."""
    (result,) = transcriber.transcribe([files["long"]])
    segments = result.segments
    assert len(segments) >= 3 and all(s.end - s.start <= MAX + 1e-9 for s in segments)
    assert all(a.end <= b.start for a, b in zip(segments, segments[1:])) and result.duration == pytest.approx(14, abs=2)
    assert result.text == " ".join(s.text for s in segments)
    samples, _ = sf.read(files["long"], dtype="float32")
    alone = transcriber.transcribe([(samples[round(s.start * SAMPLE_RATE):round(s.end * SAMPLE_RATE)], SAMPLE_RATE) for s in segments])
    assert [a.text for a in alone] == [s.text for s in segments]
    # The tiny LM may say the same for every segment; a model that reads out its segment's length shows the order.
    real_decode = transcribe_module.decode_loader

    def say_the_length(model, loader, *args, **kwargs):
        decoded = real_decode(model, loader, *args, **kwargs)
        for batch in loader:
            decoded.hypotheses.update({i: f"{d:.2f}" for i, d in zip(batch.indices, batch.durations)})
        return decoded

    monkeypatch.setattr(transcribe_module, "decode_loader", say_the_length)
    (result,) = transcriber.transcribe([files["long"]])
    assert result.text.split() == [f"{s.end - s.start:.2f}" for s in result.segments]


def test_subtitles_have_a_cue_per_segment(ckpt: Path, files: dict[str, Path], transcriber: Transcriber) -> None:
    (expected,) = transcriber.transcribe([files["long"]])
    srt = invoke(files["long"], "--ckpt", ckpt, "--format", "srt")
    assert srt.exit_code == 0, srt.output
    blocks = srt.stdout.strip("\n").split("\n\n")
    assert len(blocks) == len(expected.segments)
    for number, (block, segment) in enumerate(zip(blocks, expected.segments), start=1):
        index, timing, text = block.split("\n")
        assert index == str(number) and text == segment.text
        start, end = re.fullmatch(r"(\d\d:\d\d:\d\d,\d\d\d) --> (\d\d:\d\d:\d\d,\d\d\d)", timing).groups()
        assert start == _srt_time(segment.start) and end == _srt_time(segment.end)
    vtt = invoke(files["long"], "--ckpt", ckpt, "--format", "vtt")
    assert vtt.stdout.startswith("WEBVTT\n\n")
    cues = vtt.stdout.removeprefix("WEBVTT\n\n").strip("\n").split("\n\n")
    assert [c.split("\n")[0] for c in cues] == [f"{_srt_time(s.start)} --> {_srt_time(s.end)}".replace(",", ".") for s in expected.segments]


def _srt_time(seconds: float) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"


def test_several_inputs_need_an_output_dir_for_subtitles(ckpt: Path, files: dict[str, Path]) -> None:
    result = invoke(files["speech"], files["long"], "--ckpt", ckpt, "--format", "srt")
    assert result.exit_code == 1 and "give --output-dir DIR for 2 inputs" in result.stderr


# ---------------------------------------------------------------- inputs


def test_folders_globs_and_manifests(ckpt: Path, files: dict[str, Path], tmp_path: Path) -> None:
    nested = tmp_path / "talks" / "day1"
    nested.mkdir(parents=True)
    (tmp_path / "talks" / "b.wav").write_bytes(files["speech"].read_bytes())
    sf.write(nested / "a.flac", sf.read(files["speech"])[0], SAMPLE_RATE, subtype="PCM_24")
    (tmp_path / "talks" / "notes.txt").write_text("not audio")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"audio": str(files["speech"]), "text": "", "duration": 1.2, "offset": 0.1, "id": "part"}) + "\n")
    result = invoke(tmp_path / "talks", str(tmp_path / "talks" / "*.wav"), manifest, "--ckpt", ckpt, "--format", "json")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["audio"] for r in rows] == [str(tmp_path / "talks" / "b.wav"), str(nested / "a.flac"), str(tmp_path / "talks" / "b.wav"),
                                          str(files["speech"])]
    assert rows[3]["id"] == "part" and rows[3]["duration"] == 1.2 and "id" not in rows[0]
    assert rows[0]["text"] == rows[1]["text"] != ""  # the FLAC copy reads like the WAV
    listed = invoke(files["speech"], manifest, "--ckpt", ckpt)  # txt: a manifest row is named by its id, not its file
    assert [line.split("\t")[0] for line in listed.stdout.splitlines()] == [str(files["speech"]), "part"]


def test_inputs_that_match_nothing_are_one_line_each(ckpt: Path, files: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = invoke(files["speech"], tmp_path / "empty", str(tmp_path / "*.mp3"), "--ckpt", ckpt)
    assert result.exit_code == 1
    assert [line for line in result.stderr.splitlines() if not line.startswith("note:")] == [f"error: {tmp_path / 'empty'}: no audio files in this folder (expected .wav, .flac, "
                                          ".ogg, .opus, .mp3, .sph, .aiff, .aif, .au)",
                                          f"error: {tmp_path / '*.mp3'}: no file matches this pattern"]
    assert result.stdout.startswith(f"{files['speech']}\t")


def test_output_names_tell_inputs_apart() -> None:
    sources = [Source(name, key) for name, key in [("a/x.wav", "/d/a/x"), ("b/x.wav", "/d/b/x"), ("c.wav", "/d/c"),
                                                   ("c.flac", "/d/c"), ("y.wav", "/e/y"), ("y.wav", "/e/y")]]
    assert output_names(sources) == ["a/x", "b/x", "c.wav", "c.flac", "y", "y-2"]
    assert output_names([Source("m", "/../../etc/passwd")]) == ["passwd"]  # never outside the folder


def test_output_dir_has_a_file_per_input_and_json_keeps_failures(ckpt: Path, files: dict[str, Path], tmp_path: Path) -> None:
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "talk.wav").write_bytes(files["speech"].read_bytes())
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio" * 50)
    out = tmp_path / "out"
    result = invoke(tmp_path / "a" / "talk.wav", tmp_path / "b" / "talk.wav", bad, files["long"], "--ckpt", ckpt, "--output-dir", out)
    assert result.exit_code == 1 and result.stdout == ""
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.txt")) == ["a/talk.txt", "b/talk.txt", "long.txt"]
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [
        f"error: {bad}: cannot read audio header (Error opening '{bad}': Format not recognised.)"]
    json_out = tmp_path / "json"
    invoke(tmp_path / "a" / "talk.wav", bad, "--ckpt", ckpt, "--output-dir", json_out, "--format", "json")
    failed = json.loads((json_out / "bad.json").read_text())
    assert failed == {"audio": str(bad), "text": None, "error": f"{bad}: cannot read audio header (Error opening '{bad}': Format not recognised.)"}
    good = json.loads((json_out / "talk.json").read_text())
    assert good["text"] and good["segments"][0]["start"] == 0.0


def test_results_are_written_as_each_batch_finishes(ckpt: Path, files: dict[str, Path], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash in a later batch leaves the earlier batches' files (and stdout lines) written."""
    real_decode, calls = transcribe_module.decode_loader, []

    def crash_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of memory in batch 2")
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(transcribe_module, "decode_loader", crash_second)
    out = tmp_path / "out"
    result = invoke(files["speech"], files["noise"], files["long"], "--ckpt", ckpt, "--output-dir", out, "--batch-size", "1")
    assert isinstance(result.exception, RuntimeError)
    assert sorted(p.name for p in out.iterdir()) == ["noise.txt", "speech.txt"]  # noise: nothing to decode, no batch
    calls.clear()
    result = invoke(files["speech"], files["noise"], files["long"], "--ckpt", ckpt, "--batch-size", "1", "--format", "json")
    assert [json.loads(line)["audio"] for line in result.stdout.splitlines()] == [str(files["speech"]), str(files["noise"])]


def test_decoding_options_as_eval_has_them(ckpt: Path, files: dict[str, Path]) -> None:
    rows = {}
    for n in ("0", "4"):
        result = invoke(files["speech"], "--ckpt", ckpt, "--format", "json", "--repeat-ngram-stop", n, "--num-beams", "2")
        assert result.exit_code == 0, result.output
        rows[n] = json.loads(result.stdout)
    assert rows["0"]["stop"] == "max_tokens" and rows["4"]["stop"] == "repeat"  # the tiny LM loops: the guard decides
    bad = invoke(files["speech"], "--ckpt", ckpt, "--max-segment-seconds", "0")
    assert bad.exit_code == 1 and "[eval] max_segment_seconds: must be positive, got 0" in bad.stderr
