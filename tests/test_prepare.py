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

from macasr import config as config_module
from macasr.cli import app
from macasr.data.kaldi import lhotse_reads_sphere, parse_sph2pipe
from macasr.data.prepare import prepare
from macasr.data.manifest import open_cuts
from macasr.errors import DataError
from tests.corpora import (
    save_hf_dataset, tone, wide_console, write_commonvoice, write_fisher, write_kaldi, write_librispeech, write_switchboard,
)


def cuts_of(path: Path) -> dict[str, object]:
    return {c.id: c for c in open_cuts(path)}


# ----------------------------------------------------------------------------- LibriSpeech


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
    pasted = config_module.loads(s.toml()).datasets["librispeech_dev_clean"]  # the lines to paste load as they are
    assert (pasted.manifest, pasted.text) == ([str(s.path)], "lower")


def test_prepare_cli_prints_the_table_and_the_dataset_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wide_console(monkeypatch)
    result = CliRunner().invoke(app, ["data", "prepare", "librispeech", str(write_librispeech(tmp_path)), str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "librispeech_dev_clean" in result.output and "listed but no readable audio file" in result.output
    assert "[datasets.librispeech_dev_clean]" in result.output and 'text = "lower"' in result.output


def test_unknown_corpus_lists_close_names(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["data", "prepare", "librispeach", str(tmp_path), str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "unknown corpus 'librispeach'" in result.output and "librispeech" in result.output


def test_any_other_lhotse_recipe_by_its_name(tmp_path: Path) -> None:
    corpus = tmp_path / "waves_yesno"
    corpus.mkdir()
    for i in range(60):
        bits = [(i >> k) & 1 for k in range(8)]
        sf.write(corpus / ("_".join(map(str, bits)) + ".wav"), tone(0.05, 8000, i), 8000)
    summaries = prepare("yesno", str(corpus), tmp_path / "out")
    assert [(s.name, s.cuts) for s in summaries] == [("yesno_test", 30), ("yesno_train", 30)]
    first = min(open_cuts(summaries[1].path), key=lambda c: c.id)
    assert first.supervisions[0].text == "NO NO NO NO NO NO NO NO" and first.duration == pytest.approx(0.05)
    assert summaries[0].options == {}  # no suggestion for a corpus macasr knows nothing about


def test_a_layout_the_recipe_does_not_expect_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(app, ["data", "prepare", "yesno", str(tmp_path / "empty"), str(tmp_path / "out")])
    assert result.exit_code == 1 and "lhotse's yesno recipe failed (AssertionError" in result.output
    assert "Traceback" not in result.output


def test_corpora_lists_recipes_and_macasr_sources() -> None:
    names = CliRunner().invoke(app, ["data", "corpora"]).output.split()
    assert {"librispeech", "commonvoice", "fisher-english", "switchboard", "kaldi", "hf", "yesno"} <= set(names)


def test_recipe_option_that_the_recipe_lacks_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="prepare_librispeech has no such argument"):
        prepare("librispeech", str(write_librispeech(tmp_path)), tmp_path / "out", options=["languages=en"])


# ----------------------------------------------------------------------------- Common Voice

def test_commonvoice_release_keeps_punctuation_and_counts_missing_clips(tmp_path: Path) -> None:
    corpus = write_commonvoice(tmp_path)
    [s] = prepare("commonvoice", str(corpus), tmp_path / "out", options=['splits=["test"]', "languages=en"])
    assert s.path.name == "commonvoice_en_test.jsonl.gz" and s.name == "commonvoice_en_test"
    assert (s.cuts, dict(s.skipped), s.speakers) == (2, {"listed but no readable audio file": 1}, {"spk-b", "spk-c"})
    cuts = cuts_of(s.path)
    assert {c.supervisions[0].text for c in cuts.values()} == {'She said "yes" twice.', "It's quiet here."}
    assert cuts["common_voice_en_4"].duration == pytest.approx(0.75, abs=0.03)
    assert 'text = "basic"' in s.toml()


# ----------------------------------------------------------------------------- Switchboard


def test_switchboard_turns_become_mono_cuts_on_their_channel(tmp_path: Path) -> None:
    corpus, samples = write_switchboard(tmp_path)
    [s] = prepare("switchboard", str(corpus), tmp_path / "out")
    assert s.path == tmp_path / "out" / "switchboard.jsonl.gz" and s.name == "switchboard"
    assert s.options == {"drop_annotations": True} and s.cuts == 2  # the [silence] turn is omitted by the recipe
    cuts = {c.supervisions[0].text: c for c in open_cuts(s.path)}
    a, b = cuts["uh-huh [laughter] right"], cuts["i think th- that's it"]
    assert (a.channel, a.start, a.duration) == (0, 0.5, 1.25) and (b.channel, b.start, b.duration) == (1, 1.0, 2.0)
    with lhotse_reads_sphere():
        np.testing.assert_allclose(b.load_audio()[0], samples[8000:24000, 1], atol=1e-4)


def test_fisher_english_speakers_and_channels(tmp_path: Path) -> None:
    corpus, samples = write_fisher(tmp_path)
    options = ['audio_dirs=["LDC2004S13"]', 'transcript_dirs=["LDC2004T19"]']
    [s] = prepare("fisher-english", str(corpus), tmp_path / "out", options=options)
    assert s.path.name == "fisher-english.jsonl.gz" and s.name == "fisher_english"
    assert (s.cuts, s.speakers) == (2, {"3917", "3911"})  # overlapping turns: one supervision per cut
    cuts = {c.supervisions[0].speaker: c for c in open_cuts(s.path)}
    a, b = cuts["3917"], cuts["3911"]
    assert (a.channel, a.start, a.duration, a.supervisions[0].text) == (0, 0.5, 1.0, "hi (( um )) my name is")
    assert (b.channel, b.start, b.duration, b.supervisions[0].text) == (1, 1.2, 1.6, "[laughter] oh hi th- there")
    with lhotse_reads_sphere():
        np.testing.assert_allclose(b.load_audio()[0], samples[9600:22400, 1], atol=1e-4)


# ----------------------------------------------------------------------------- Kaldi + SPHERE


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
    (data / "text").write_text("utt1 piped words\nutt2 no recording\n")
    with pytest.raises(DataError) as e:
        prepare("kaldi", str(data), tmp_path / "out", allow_pipes=True)
    assert str(e.value) == f"{data / 'text'}:2: 'utt2' is not in wav.scp"
    (data / "text").write_text("utt1 piped words\n")
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
