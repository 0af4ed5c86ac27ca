"""`macasr data shar` and `macasr data stats` on manifests prepared from tiny corpora."""

from __future__ import annotations

import math

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from macasr import config as config_module, testing
from macasr.cli import app
from macasr.data.prepare import prepare
from macasr.data.manifest import open_cuts
from macasr.data.shar import write_shar
from macasr.data.stats import config_stats, manifest_stats
from macasr.data.text import normalize_target
from macasr.errors import DataError
from tests.corpora import tone, wide_console, write_kaldi, write_librispeech


@pytest.fixture
def libri_manifest(tmp_path: Path) -> Path:
    [s] = prepare("librispeech", str(write_librispeech(tmp_path)), tmp_path / "manifests")
    return s.path


def test_shar_shards_hold_the_cuts_and_lossless_audio(libri_manifest: Path, tmp_path: Path) -> None:
    from lhotse import CutSet

    out = tmp_path / "shar"
    summary = write_shar(libri_manifest, out, shard_size=2)
    assert (summary.shards, summary.cuts, dict(summary.skipped)) == (2, 3, {})
    assert sorted(p.name for p in out.iterdir()) == [
        "cuts.000000.jsonl.gz", "cuts.000001.jsonl.gz", "recording.000000.tar", "recording.000001.tar"]
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]  # scratch folder removed
    original = {c.id: c for c in open_cuts(libri_manifest)}
    read = list(CutSet.from_shar(in_dir=out))
    assert sorted(c.id for c in read) == sorted(original)
    for cut in read:
        assert cut.supervisions[0].text == original[cut.id].supervisions[0].text
        np.testing.assert_allclose(cut.load_audio(), original[cut.id].load_audio(), atol=1e-4)  # FLAC of 16-bit audio


def test_shar_of_a_telephone_channel_keeps_that_channel(tmp_path: Path) -> None:
    from lhotse import CutSet

    data, samples = write_kaldi(tmp_path)
    [s] = prepare("kaldi", str(data), tmp_path / "manifests")
    write_shar(s.path, tmp_path / "shar", shard_size=10)
    cuts = {c.id: c for c in CutSet.from_shar(in_dir=tmp_path / "shar")}
    b = cuts["sw02001-B_000100-000400"]
    assert b.sampling_rate == 8000
    np.testing.assert_allclose(b.load_audio()[0], samples[8000:32000, 1], atol=1e-4)


def test_shar_refuses_a_folder_with_files(libri_manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "shar"
    out.mkdir()
    (out / "cuts.000000.jsonl.gz").write_bytes(b"")
    with pytest.raises(DataError, match="not empty"):
        write_shar(libri_manifest, out, shard_size=2)


def test_shar_skips_unreadable_audio_and_says_why(libri_manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wide_console(monkeypatch)
    first = next(iter(open_cuts(libri_manifest)))
    Path(first.recording.sources[0].source).unlink()
    result = CliRunner().invoke(app, ["data", "shar", str(libri_manifest), str(tmp_path / "shar"), "--shard-size", "5"])
    assert result.exit_code == 0, result.output
    assert "1 shard(s), 2 cuts" in result.output and "1 audio not readable" in result.output


def test_stats_reports_counts_durations_and_speakers(libri_manifest: Path) -> None:
    stats = manifest_stats(libri_manifest)
    assert (stats.cuts, stats.speakers, stats.seconds) == (3, 2, pytest.approx(4.5))
    assert stats.duration["max"] == pytest.approx(2.0) and stats.duration["p50"] == pytest.approx(1.5)
    texts = [c.supervisions[0].text for c in open_cuts(libri_manifest)]
    assert stats.chars["max"] == max(len(t) for t in texts) and stats.tokens_per_second is None


def test_stats_tokens_per_second_under_the_config_tokenizer(libri_manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wide_console(monkeypatch)
    tokenizer = testing.train_tokenizer(["go do you hear number"], vocab_size=120)
    tokenizer.save_pretrained(tmp_path / "llm")
    cuts = list(open_cuts(libri_manifest))
    rates = [len(tokenizer(c.supervisions[0].text, add_special_tokens=False)["input_ids"]) / c.duration for c in cuts]
    stats = manifest_stats(libri_manifest, tokenizer)
    assert stats.tokens_per_second["max"] == pytest.approx(max(rates))  # type: ignore[index]
    assert stats.tokens_per_second["p99"] == pytest.approx(float(np.percentile(rates, 99)))  # type: ignore[index]

    config = tmp_path / "c.toml"
    low = float(np.percentile(rates, 99)) / 2
    config.write_text(f'[model.llm]\npath = "{tmp_path / "llm"}"\n\n[eval]\nmax_tokens_per_second = {low}\nmax_tokens_base = 1\n')
    counts = [len(tokenizer(c.supervisions[0].text, add_special_tokens=False)["input_ids"]) for c in cuts]
    over = sum(n + 1 > math.ceil(low * c.duration) + 1 for n, c in zip(counts, cuts))  # the decoder's cap, end token included
    assert over > 0
    result = CliRunner().invoke(app, ["data", "stats", str(libri_manifest), "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "tokens/s p99" in result.output and f"{over} of {len(cuts)} clips" in result.output
    assert "more target tokens than the decoder may emit" in result.output
    # The default max_tokens_base (16) covers these short transcripts although p99 is above the rate.
    config.write_text(f'[model.llm]\npath = "{tmp_path / "llm"}"\n\n[eval]\nmax_tokens_per_second = {low}\n')
    result = CliRunner().invoke(app, ["data", "stats", str(libri_manifest), "--config", str(config)])
    assert "covers every clip's target" in result.output and "warning" not in result.output


def test_stats_of_a_missing_manifest_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["data", "stats", str(tmp_path / "nope.jsonl.gz")])
    assert result.exit_code == 1 and "nope.jsonl.gz" in result.output and "Traceback" not in result.output


def test_stats_of_a_named_dataset_count_tokens_of_its_training_targets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wide_console(monkeypatch)
    data, _ = write_kaldi(tmp_path)
    [s] = prepare("kaldi", str(data), tmp_path / "manifests", name="swbd")
    tokenizer = testing.train_tokenizer(["uh-huh yeah i think that's right"], vocab_size=120)
    tokenizer.save_pretrained(tmp_path / "llm")
    config = tmp_path / "c.toml"
    config.write_text(f'[model.llm]\npath = "{tmp_path / "llm"}"\n\n[datasets.swbd]\nmanifest = ["{s.path}"]\n'
                      'text = "lower"\ndrop_annotations = true\n')
    [stats] = config_stats(config_module.load(config), str(config), ["swbd"])
    cuts = list(open_cuts(s.path))
    rates = [len(tokenizer(normalize_target(c.supervisions[0].text, "lower", True), add_special_tokens=False)["input_ids"])
             / c.duration for c in cuts]
    assert stats.label == "swbd" and stats.tokens_per_second["max"] == pytest.approx(max(rates))  # type: ignore[index]
    raw = max(len(tokenizer(c.supervisions[0].text, add_special_tokens=False)["input_ids"]) / c.duration for c in cuts)
    assert raw > max(rates)  # the tags and partial words are not counted
    # A path whose stem is a dataset's name is a column of its own, named as given.
    both = config_stats(config_module.load(config), str(config), ["swbd", str(s.path)])
    assert [r.label for r in both] == ["swbd", str(s.path)]
    result = CliRunner().invoke(app, ["data", "stats", "swbd", "--config", str(config)])
    assert result.exit_code == 0 and "swbd" in result.output, result.output
    result = CliRunner().invoke(app, ["data", "stats", "nosuch", "--config", str(config)])
    assert result.exit_code == 1 and "no dataset named `nosuch`" in result.output


def test_shar_of_a_macasr_manifest_skips_its_bad_clips(tmp_path: Path) -> None:
    sf.write(tmp_path / "a.wav", tone(0.5, 16000), 16000)
    rows = [{"audio": "a.wav", "text": "fine", "duration": 0.5}, {"audio": "gone.wav", "text": "lost", "duration": 1.0}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = write_shar(tmp_path / "m.jsonl", tmp_path / "shar", shard_size=10)
    assert (summary.cuts, dict(summary.skipped)) == (1, {"bad clip": 1})
    assert summary.examples == ["m-000002: no such audio file"]
    [cut] = open_cuts(tmp_path / "shar")
    assert cut.supervisions[0].text == "fine" and cut.duration == pytest.approx(0.5)


def test_shar_that_writes_nothing_leaves_no_folder(libri_manifest: Path, tmp_path: Path) -> None:
    for cut in open_cuts(libri_manifest):
        Path(cut.recording.sources[0].source).unlink(missing_ok=True)
    result = CliRunner().invoke(app, ["data", "shar", str(libri_manifest), str(tmp_path / "shar")])
    assert result.exit_code == 1 and "no cut could be written" in result.output
    assert not (tmp_path / "shar").exists()
