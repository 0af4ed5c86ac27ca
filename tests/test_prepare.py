"""`macasr data prepare` on tiny corpora written here in each real layout."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from macasr.cli import app
from macasr.data.kaldi import lhotse_reads_sphere, parse_sph2pipe
from macasr.data.prepare import prepare
from macasr.data.shar import open_cuts
from macasr.errors import DataError


def tone(seconds: float, rate: int, seed: int = 0, channels: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (int(seconds * rate), channels) if channels > 1 else (int(seconds * rate),)
    return (0.2 * rng.standard_normal(shape)).clip(-0.9, 0.9).astype("float32")


WIDE = {"COLUMNS": "200", "TERMINAL_WIDTH": "200"}  # Rich tables unwrapped


def cuts_of(path: Path) -> dict[str, object]:
    return {c.id: c for c in open_cuts(path)}


# ----------------------------------------------------------------------------- LibriSpeech


def write_librispeech(root: Path) -> Path:
    """LibriSpeech/dev-clean/SPK/CHAPTER/SPK-CHAPTER-XXXX.flac + SPK-CHAPTER.trans.txt; one line
    names a FLAC that is not there."""
    corpus = root / "LibriSpeech"
    for spk, chapter, seconds in [("84", "121123", (1.0, 1.5)), ("174", "50561", (2.0,))]:
        folder = corpus / "dev-clean" / spk / chapter
        folder.mkdir(parents=True)
        lines = []
        for i, s in enumerate(seconds):
            uid = f"{spk}-{chapter}-{i:04d}"
            sf.write(folder / f"{uid}.flac", tone(s, 16000, i), 16000)
            lines.append(f"{uid} GO DO YOU HEAR NUMBER {spk} {i}")
        lines.append(f"{spk}-{chapter}-0099 THIS LINE HAS NO AUDIO")
        (folder / f"{spk}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
    (corpus / "SPEAKERS.TXT").write_text(";ID  |SEX| SUBSET           |MINUTES| NAME\n84   | F | dev-clean        | 8.02 | Christie\n")
    return corpus


def test_librispeech_tree_becomes_one_cutset_per_split(tmp_path: Path) -> None:
    summaries = prepare("librispeech", str(write_librispeech(tmp_path)), tmp_path / "out")
    [s] = summaries
    assert s.path == tmp_path / "out" / "librispeech_dev-clean.jsonl.gz" and s.name == "librispeech_dev_clean"
    assert (s.cuts, s.speakers, dict(s.skipped)) == (3, {"84", "174"}, {"listed but no readable audio file": 2})
    assert s.seconds == pytest.approx(4.5)
    cuts = cuts_of(s.path)
    assert sorted(cuts) == ["174-50561-0000", "84-121123-0000", "84-121123-0001"]
    cut = cuts["84-121123-0001"]
    assert cut.duration == pytest.approx(1.5) and len(cut.supervisions) == 1
    assert cut.supervisions[0].text == "GO DO YOU HEAR NUMBER 84 1"
    np.testing.assert_allclose(cut.load_audio()[0], sf.read(cut.recording.sources[0].source, dtype="float32")[0], atol=1e-6)
    assert 'text = "lower"' in s.toml() and f'manifest = ["{s.path}"]' in s.toml()


def test_prepare_cli_prints_the_table_and_the_dataset_lines(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["data", "prepare", "librispeech", str(write_librispeech(tmp_path)), str(tmp_path / "out")], env=WIDE)
    assert result.exit_code == 0, result.output
    assert "librispeech_dev_clean" in result.output and "listed but no readable audio file" in result.output
    assert "[datasets.librispeech_dev_clean]" in result.output and 'text = "lower"' in result.output


def test_unknown_corpus_lists_close_names(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["data", "prepare", "librispeach", str(tmp_path), str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "unknown corpus 'librispeach'" in result.output and "librispeech" in result.output


def test_recipe_option_that_the_recipe_lacks_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="prepare_librispeech has no such argument"):
        prepare("librispeech", str(write_librispeech(tmp_path)), tmp_path / "out", options=["languages=en"])


# ----------------------------------------------------------------------------- Common Voice

CV_COLUMNS = ["client_id", "path", "sentence_id", "sentence", "sentence_domain", "up_votes", "down_votes",
              "age", "gender", "accents", "variant", "locale", "segment"]


def write_commonvoice(root: Path) -> Path:
    """cv-corpus-N/en/{validated,train,dev,test}.tsv (a recent release's columns), clips/*.mp3,
    clip_durations.tsv; one test row names a clip that is not there."""
    corpus = root / "cv-corpus-20.0-2024-12-06"
    lang = corpus / "en"
    (lang / "clips").mkdir(parents=True)
    rows = {"train": [("spk-a", "common_voice_en_1.mp3", "Hello, world!")],
            "dev": [("spk-a", "common_voice_en_2.mp3", "Is it dev?")],
            "test": [("spk-b", "common_voice_en_3.mp3", 'She said "yes" twice.'),
                     ("spk-c", "common_voice_en_4.mp3", "It's quiet here."),
                     ("spk-c", "common_voice_en_404.mp3", "No clip for this one.")]}
    durations = ["clip\tduration[ms]"]
    for split, split_rows in rows.items():
        lines = ["\t".join(CV_COLUMNS)]
        for i, (client, clip, sentence) in enumerate(split_rows):
            if "404" not in clip:
                sf.write(lang / "clips" / clip, tone(0.5 + 0.25 * i, 48000, i), 48000, format="MP3")
                durations.append(f"{clip}\t{int((0.5 + 0.25 * i) * 1000)}")
            lines.append("\t".join([client, clip, f"s{i}", sentence, "", "2", "0", "twenties", "female_feminine", "", "", "en", ""]))
        (lang / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    (lang / "validated.tsv").write_text((lang / "train.tsv").read_text())
    (lang / "clip_durations.tsv").write_text("\n".join(durations) + "\n")
    return corpus


def test_commonvoice_release_keeps_punctuation_and_counts_missing_clips(tmp_path: Path) -> None:
    corpus = write_commonvoice(tmp_path)
    [s] = prepare("commonvoice", str(corpus), tmp_path / "out", options=['splits=["test"]', "languages=en"])
    assert s.path.name == "commonvoice_en_test.jsonl.gz" and s.name == "commonvoice_en_test"
    assert (s.cuts, dict(s.skipped), s.speakers) == (2, {"listed but no readable audio file": 1}, {"spk-b", "spk-c"})
    cuts = cuts_of(s.path)
    assert {c.supervisions[0].text for c in cuts.values()} == {'She said "yes" twice.', "It's quiet here."}
    assert cuts["common_voice_en_4"].duration == pytest.approx(0.75, abs=0.03)
    assert 'text = "whisper"' in s.toml()


# ----------------------------------------------------------------------------- Kaldi + SPHERE


def write_kaldi(root: Path, *, extra_wav: str = "", extra_segments: str = "", extra_text: str = "") -> tuple[Path, np.ndarray]:
    """An 8 kHz two-channel NIST SPHERE call (one channel per side) referenced through sph2pipe
    lines, with segments, text (with annotation tags), utt2spk and utt2dur."""
    data = root / "data" / "train"
    data.mkdir(parents=True)
    sph = root / "audio" / "sw02001.sph"
    sph.parent.mkdir()
    samples = tone(4.0, 8000, 7, channels=2)
    sf.write(sph, samples, 8000, format="NIST", subtype="PCM_16")
    (data / "wav.scp").write_text(f"sw02001-A sph2pipe -f wav -p -c 1 {sph} |\nsw02001-B sph2pipe -f wav -p -c 2 {sph} |\n" + extra_wav)
    (data / "segments").write_text("sw02001-A_000000-000150 sw02001-A 0.00 1.50\nsw02001-B_000100-000400 sw02001-B 1.00 4.00\n" + extra_segments)
    (data / "text").write_text("sw02001-A_000000-000150 uh-huh [laughter] yeah\nsw02001-B_000100-000400 i think th- that's right\n" + extra_text)
    (data / "utt2spk").write_text("sw02001-A_000000-000150 sw02001-A\nsw02001-B_000100-000400 sw02001-B\n")
    (data / "utt2dur").write_text("sw02001-A_000000-000150 1.5\nsw02001-B_000100-000400 3.0\n")
    return data, sf.read(sph, dtype="float32")[0]


def test_kaldi_sph2pipe_lines_read_the_file_and_channel_directly(tmp_path: Path) -> None:
    data, samples = write_kaldi(tmp_path)
    [s] = prepare("kaldi", str(data), tmp_path / "out")
    assert s.path == tmp_path / "out" / "train.jsonl.gz" and (s.cuts, s.seconds) == (2, pytest.approx(4.5))
    cuts = cuts_of(s.path)
    a, b = cuts["sw02001-A_000000-000150"], cuts["sw02001-B_000100-000400"]
    assert (a.channel, a.start, a.duration, a.supervisions[0].text) == (0, 0.0, 1.5, "uh-huh [laughter] yeah")
    assert (b.channel, b.start, b.duration, b.supervisions[0].speaker) == (1, 1.0, 3.0, "sw02001-B")
    assert b.recording.sources[0].type == "file" and b.sampling_rate == 8000
    with lhotse_reads_sphere():
        np.testing.assert_allclose(b.load_audio()[0], samples[8000:32000, 1], atol=1e-4)
        np.testing.assert_allclose(a.load_audio()[0], samples[:12000, 0], atol=1e-4)


def test_kaldi_problems_are_all_reported_with_file_and_line(tmp_path: Path) -> None:
    bad_sph = tmp_path / "bad.sph"
    bad_sph.write_bytes(b"NIST_1A\n   1024\nshorten-compressed-looking garbage")
    data, _ = write_kaldi(
        tmp_path,
        extra_wav=f"other gunzip -c /x/other.wav.gz |\nbad sph2pipe -f wav -p -c 1 {bad_sph} |\n",
        extra_segments="late sw02001-A 3.00 9.00\nsw02001-A_000000-000150 sw02001-A 0 1\n",
        extra_text="late too late\norphan words without a segment\n",
    )
    with pytest.raises(DataError) as e:
        prepare("kaldi", str(data), tmp_path / "out")
    message = str(e.value)
    assert f"{data / 'wav.scp'}:3: piped command 'gunzip -c /x/other.wav.gz' is not run without --allow-pipes" in message
    assert f"{data / 'wav.scp'}:4: soundfile cannot decode {bad_sph}" in message and "--allow-pipes" in message
    assert f"{data / 'segments'}:3: segment 3.00-9.00 s runs past the end of sw02001-A (4.00 s)" in message
    assert f"{data / 'segments'}:4: id 'sw02001-A_000000-000150' again (first on 1)" in message
    assert f"{data / 'text'}:4: 'orphan' is not in segments" in message
    assert f"{data / 'text'}:3: 'late' has no line in {data / 'utt2spk'}" in message
    assert not (tmp_path / "out" / "train.jsonl.gz").exists()


def test_kaldi_other_pipes_run_only_with_allow_pipes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    wav = tmp_path / "a.wav"
    samples = tone(1.0, 16000, 3)
    sf.write(wav, samples, 16000, subtype="PCM_16")
    (data / "wav.scp").write_text(f"utt1 cat {wav} |\n")
    (data / "text").write_text("utt1 piped words\n")
    result = CliRunner().invoke(app, ["data", "prepare", "kaldi", str(data), str(tmp_path / "out")])
    assert result.exit_code == 1 and f"{data / 'wav.scp'}:1: piped command" in result.output
    [s] = prepare("kaldi", str(data), tmp_path / "out", allow_pipes=True)
    [cut] = open_cuts(s.path)
    assert cut.recording.sources[0].type == "command" and cut.duration == pytest.approx(1.0)
    np.testing.assert_allclose(cut.load_audio()[0], sf.read(wav, dtype="float32")[0], atol=1e-6)


@pytest.mark.parametrize(("line", "expected"), [
    ("sph2pipe -f wav -p -c 2 /d/sw02001.sph |", ("/d/sw02001.sph", 1)),
    ("/opt/kaldi/tools/sph2pipe_v2.5/sph2pipe -f wav -p -c 1 a.sph |", ("a.sph", 0)),
    ("sph2pipe -f wav -p /d/x.sph |", ("/d/x.sph", None)),
    ("sph2pipe -f wav -p -t 0:10 /d/x.sph |", None),
    ("sph2pipe -f wav -p -c 1 /d/x.sph | sox -t wav - -r 16000 -t wav - |", None),
    ("sox x.wav -t wav - |", None),
])
def test_parse_sph2pipe(line: str, expected: tuple[str, int | None] | None) -> None:
    assert parse_sph2pipe(line) == expected


# ----------------------------------------------------------------------------- How2


def test_features_only_how2_folder_is_refused_with_how_to_get_audio(tmp_path: Path) -> None:
    data = tmp_path / "how2" / "train"
    data.mkdir(parents=True)
    (data / "feats.scp").write_text("v1_0 /how2/fbank_pitch_181506.1.ark:8\n")
    (data / "cmvn.scp").write_text("v1 /how2/cmvn.ark:3\n")
    (data / "text").write_text("v1_0 how to tie a knot\n")
    (data / "fbank_pitch_181506.1.ark").write_bytes(b"\0B\x04\x03FM ")
    for corpus in ("kaldi", "how2"):
        result = CliRunner().invoke(app, ["data", "prepare", corpus, str(data), str(tmp_path / "out")])
        assert result.exit_code == 1
        assert "How2 ships filterbank features, not audio" in result.output and "ffmpeg" in result.output
        assert "macasr data prepare kaldi" in result.output


# ----------------------------------------------------------------------------- Hugging Face


def save_hf_dataset(root: Path) -> Path:
    import datasets

    def wav_bytes(seconds: float, seed: int) -> bytes:
        import io

        buffer = io.BytesIO()
        sf.write(buffer, tone(seconds, 16000, seed), 16000, format="WAV", subtype="PCM_16")
        return buffer.getvalue()

    # Built as a {bytes, path} struct and cast to Audio, as hub datasets store audio: encoding
    # through the Audio feature directly would need torchcodec, which macasr does not use.
    split = datasets.Dataset.from_dict(
        {"audio": [{"bytes": wav_bytes(0.5, 1), "path": None}, {"bytes": wav_bytes(1.25, 2), "path": None}],
         "sentence": ["Hi there.", "Second one"], "client": ["x", "y"]}).cast_column("audio", datasets.Audio())
    folder = root / "tiny_hf"
    datasets.DatasetDict({"test": split}).save_to_disk(str(folder))
    return folder


def test_hf_saved_dataset_becomes_flac_files_and_a_cutset(tmp_path: Path) -> None:
    folder = save_hf_dataset(tmp_path)
    [s] = prepare("hf", str(folder), tmp_path / "out", split="test", text_column="sentence", speaker_column="client")
    assert s.path == tmp_path / "out" / "tiny_hf_test.jsonl.gz" and (s.cuts, s.speakers) == (2, {"x", "y"})
    cuts = sorted(open_cuts(s.path), key=lambda c: c.id)
    assert [c.supervisions[0].text for c in cuts] == ["Hi there.", "Second one"]
    assert [c.duration for c in cuts] == [pytest.approx(0.5), pytest.approx(1.25)]
    source = Path(cuts[1].recording.sources[0].source)
    assert source.suffix == ".flac" and source.parent == tmp_path / "out" / "tiny_hf_test"
    expected = np.round(tone(1.25, 16000, 2) * 32767) / 32767
    np.testing.assert_allclose(cuts[1].load_audio()[0], expected, atol=1e-4)


def test_hf_wrong_column_and_split_name_what_there_is(tmp_path: Path) -> None:
    folder = save_hf_dataset(tmp_path)
    with pytest.raises(DataError, match=r"--text-column 'text' is not a column \(it has audio, sentence, client\)"):
        prepare("hf", str(folder), tmp_path / "out", split="test")
    with pytest.raises(DataError, match=r"no split 'train' \(it has test\)"):
        prepare("hf", str(folder), tmp_path / "out", split="train", text_column="sentence")


def test_hf_without_datasets_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(DataError, match=r"pip install 'macasr\[hf\]'"):
        prepare("hf", str(tmp_path), tmp_path / "out", split="test")


def test_written_manifest_is_one_gzipped_cut_per_line(tmp_path: Path) -> None:
    data, _ = write_kaldi(tmp_path)
    [s] = prepare("kaldi", str(data), tmp_path / "out", name="swbd")
    rows = [json.loads(line) for line in gzip.open(s.path, "rt")]
    assert [r["type"] for r in rows] == ["MonoCut", "MonoCut"] and s.path.name == "swbd.jsonl.gz"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["swbd.jsonl.gz"]  # no temporary file left
