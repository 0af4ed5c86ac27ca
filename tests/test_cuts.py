"""Manifests of every kind read as lazy CutSets: macasr JSONL, lhotse CutSet, Shar; named datasets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from lhotse import CutSet

from macasr import config as config_module
from macasr.config import Config, DatasetConfig
from macasr.data.manifest import (
    DataSource, dataset_sources, manifest_kind, manifest_summary, open_cuts, source_for,
)
from macasr.errors import ConfigError, DataError


def _wav(path: Path, seconds: float, rate: int = 16_000, channels: int = 1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = (0.1 * np.random.default_rng(0).standard_normal((round(seconds * rate), channels))).astype("float32")
    sf.write(path, samples, rate)
    return path


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    _wav(tmp_path / "a.wav", 1.0)
    _wav(tmp_path / "b.wav", 2.0, rate=8_000, channels=2)
    return _jsonl(tmp_path / "m.jsonl", [
        {"audio": "a.wav", "text": "hello there", "duration": 1.0, "speaker": "s1"},
        {"id": "seg", "audio": "b.wav", "text": "second half", "duration": 1.0, "offset": 1.0, "speaker": "s2"},
    ])


def test_a_macasr_manifest_reads_as_cuts_with_origin_and_audio(corpus: Path) -> None:
    cuts = list(open_cuts(corpus))
    assert [c.id for c in cuts] == ["m-000001", "seg"]
    assert [c.supervisions[0].text for c in cuts] == ["hello there", "second half"]
    assert [c.custom["origin"] for c in cuts] == [f"{corpus}:1", f"{corpus}:2"]
    assert cuts[1].start == 1.0 and cuts[1].duration == 1.0 and cuts[1].supervisions[0].speaker == "s2"
    assert cuts[0].load_audio().shape == (1, 16_000)
    stereo = cuts[1].load_audio()  # both channels of the 8 kHz file, 1 s from 1 s in
    assert stereo.shape == (2, 8_000)
    expected, _ = sf.read(corpus.parent / "b.wav", start=8_000, frames=8_000, dtype="float32", always_2d=True)
    np.testing.assert_allclose(stereo, expected.T, atol=1e-4)
    assert all("problem" not in c.custom for c in cuts)


def test_the_cutset_is_lazy_and_can_be_read_again(corpus: Path) -> None:
    cuts = open_cuts(corpus)
    assert cuts.is_lazy
    assert [c.id for c in cuts] == [c.id for c in cuts]


@pytest.mark.parametrize(("row", "problem"), [
    ({"audio": "gone.wav", "text": "x", "duration": 1.0}, "no such audio file"),
    ({"audio": "a.wav", "text": "x", "duration": 2.0}, "the file is 1.00 s long but the manifest says duration 2 s"),
    ({"audio": "a.wav", "text": "x", "duration": 0.5, "offset": 1.5}, "offset 1.5 s is beyond the end of the file (1.00 s)"),
    ({"audio": "a.wav", "text": "x", "duration": 1.0, "offset": 0.5}, "offset 0.5 s + duration 1 s runs past the end"),
    ({"audio": "junk.wav", "text": "x", "duration": 1.0}, "cannot read audio header"),
])
def test_audio_known_to_be_unusable_is_marked_not_raised(tmp_path: Path, row: dict, problem: str) -> None:
    _wav(tmp_path / "a.wav", 1.0)
    (tmp_path / "junk.wav").write_bytes(b"not audio at all")
    [cut] = open_cuts(_jsonl(tmp_path / "m.jsonl", [row]))
    assert problem in cut.custom["problem"]


def test_a_length_within_tolerance_reads_the_whole_file(tmp_path: Path) -> None:
    _wav(tmp_path / "a.wav", 1.0)
    [cut] = open_cuts(_jsonl(tmp_path / "m.jsonl", [{"audio": "a.wav", "text": "x", "duration": 1.05}]))
    assert "problem" not in cut.custom and cut.duration == pytest.approx(1.0)


def test_every_bad_line_is_reported_before_any_cut_is_used(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text('{"audio": "a.wav", "text": "x", "duration": 1}\nnot json\n{"audio": "a.wav", "duration": -1}\n')
    with pytest.raises(DataError) as e:
        open_cuts(path)
    assert str(e.value).splitlines() == [
        f"{path}:2: not valid JSON (Expecting value)",
        f"{path}:3: missing key `text` (expected audio, text, duration)",
        f"{path}:3: `duration` = -1: expected seconds as a finite positive number",
    ]


def test_lhotse_and_shar_manifests_read_the_same_cuts(corpus: Path, tmp_path: Path) -> None:
    cuts = open_cuts(corpus)
    lhotse_path = tmp_path / "cuts.jsonl.gz"
    CutSet.from_cuts(list(cuts)).to_file(lhotse_path)
    shar = tmp_path / "shar"
    shar.mkdir()
    CutSet.from_cuts(list(cuts)).to_shar(shar, fields={"recording": "flac"}, shard_size=1)
    assert manifest_kind(corpus) == "macasr" and manifest_kind(lhotse_path) == "lhotse" and manifest_kind(shar) == "shar"
    for path in (lhotse_path, shar):
        read = list(open_cuts(path))
        assert [c.id for c in read] == [c.id for c in cuts]
        assert [c.supervisions[0].text for c in read] == ["hello there", "second half"]
        assert all(c.custom["origin"] == str(path) for c in read)
        assert read[0].load_audio().shape == (1, 16_000)
        assert manifest_summary(path) == manifest_summary(corpus)
    assert manifest_summary(corpus).speakers == 2 and manifest_summary(corpus).seconds == pytest.approx(2.0)


def test_lhotse_cuts_get_one_supervision_or_a_problem(corpus: Path, tmp_path: Path) -> None:
    from lhotse.utils import fastcopy

    cut = next(iter(open_cuts(corpus)))
    sup = cut.supervisions[0]
    halves = [fastcopy(sup, id="h1", duration=0.5, text="hello"), fastcopy(sup, id="h2", start=0.5, duration=0.5, text="there")]
    rows = [fastcopy(cut, id="two", supervisions=halves[::-1]), fastcopy(cut, id="none", supervisions=[]),
            fastcopy(cut, id="empty", supervisions=[fastcopy(sup, text="")]),
            fastcopy(cut, id="no_text", supervisions=[fastcopy(sup, text=None)])]
    path = tmp_path / "c.jsonl.gz"
    CutSet.from_cuts(rows).to_file(path)
    two, none, empty, no_text = open_cuts(path)
    assert [s.text for s in two.supervisions] == ["hello there"] and "problem" not in two.custom
    assert none.custom["problem"].startswith("no transcript") and no_text.custom["problem"].startswith("no transcript")
    assert "problem" not in empty.custom  # an empty reference, as "text": "" is in macasr JSONL


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: p / "missing.jsonl", "no such manifest"),
    (lambda p: p, "is a folder without Shar shards"),
    (lambda p: _jsonl(p / "r.jsonl", [{"id": "r", "sources": [], "sampling_rate": 16000}]), "is a lhotse recording manifest"),
    (lambda p: _jsonl(p / "x.jsonl", [{"path": "a.wav", "sentence": "hi"}]), "expected a macasr manifest row"),
    (lambda p: (p / "empty.jsonl").open("w").close() or p / "empty.jsonl", "has no utterances"),
])
def test_what_is_not_a_manifest_is_named(tmp_path: Path, make, message: str) -> None:
    with pytest.raises(DataError, match=message):
        open_cuts(make(tmp_path))


def test_named_datasets_and_paths_resolve_to_sources() -> None:
    cfg = config_module.loads(
        '[datasets.libri]\nmanifest = ["a.jsonl.gz", "b.jsonl.gz"]\nweight = 3\ntext = "lower"\n'
        '[data]\ntrain = ["libri", "more/extra.jsonl"]\nvalid = ["libri"]\n'
    )
    assert dataset_sources(cfg, "train") == [
        DataSource("libri", ["a.jsonl.gz", "b.jsonl.gz"], 3.0, "lower"), DataSource("extra", ["more/extra.jsonl"]),
    ]
    with pytest.raises(ConfigError, match=r"no dataset named `other` in \[datasets.\*\] \(known: libri\)"):
        source_for(cfg, "other")


def test_unknown_dataset_names_are_config_errors_on_their_lines() -> None:
    text = '[data]\ntrain = ["libri"]\n\n[eval]\ntest_sets = ["dev"]\n\n[datasets.dev]\nmanifest = []\n'
    with pytest.raises(ConfigError) as e:
        config_module.loads(text, "c.toml")
    assert str(e.value).splitlines() == [
        "c.toml:2: [data] train: no dataset named `libri` in [datasets.*] (known: dev); "
        "a manifest path needs a folder or a file extension",
        "c.toml:8: [datasets.dev] manifest: expected at least one manifest path",
    ]


def test_the_old_eval_datasets_table_still_loads_with_a_warning() -> None:
    with pytest.warns(FutureWarning, match=r'\[datasets.test\] manifest = "t.jsonl"; and \[eval\] test_sets = \["test"\]'):
        cfg = config_module.loads('[eval.datasets]\ntest = "t.jsonl"\n')
    assert cfg.datasets == {"test": DatasetConfig(manifest=["t.jsonl"])} and cfg.eval.test_sets == ["test"]
    assert "[datasets.test]" in config_module.dumps(cfg) and "[eval.datasets]" not in config_module.dumps(cfg)


def test_datasets_round_trip_through_dump_and_relative_paths_resolve(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.jsonl").write_text("")
    cfg = config_module.replace(Config(), datasets={"a": DatasetConfig(manifest=["d/a.jsonl"], weight=2.0, drop_annotations=True)},
                                **{"data.train": ["a"]})
    assert config_module.loads(config_module.dumps(cfg)) == cfg
    resolved = config_module.resolve_paths(cfg, tmp_path)
    assert resolved.datasets["a"].manifest == [str(tmp_path / "d" / "a.jsonl")] and resolved.data.train == ["a"]


def test_a_shared_manifest_runs_no_shell_command_unasked(corpus: Path, tmp_path: Path) -> None:
    from lhotse.audio import AudioSource
    from lhotse.utils import fastcopy

    cut = next(iter(open_cuts(corpus)))
    marker = tmp_path / "ran"
    command = f"touch {marker}; cat {corpus.parent / 'a.wav'}"
    recording = fastcopy(cut.recording, sources=[AudioSource(type="command", channels=[0], source=command)])
    path = tmp_path / "cmd.jsonl.gz"
    CutSet.from_cuts([fastcopy(cut, recording=recording, custom={})]).to_file(path)
    [refused] = open_cuts(path)
    assert refused.custom["problem"].startswith("its audio comes from a shell command (touch ")
    assert "[data] allow_commands = true" in refused.custom["problem"] and not marker.exists()
    [allowed] = open_cuts(path, allow_commands=True)
    assert "problem" not in allowed.custom
    assert allowed.load_audio().shape == (1, 16_000) and marker.exists()  # the user asked for it


def test_a_mistyped_dataset_name_is_one_problem_with_a_suggestion(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[data]\ntrain = ["librispeech_dev_clen"]\n\n[datasets.librispeech_dev_clean]\n'
                    f'manifest = ["{tmp_path / "dev.jsonl.gz"}"]\n')
    (tmp_path / "dev.jsonl.gz").write_bytes(b"")
    report = config_module.check(path)
    assert report.problems == [f"{path}:2: [data] train: no dataset named `librispeech_dev_clen` in [datasets.*] "
                               "(did you mean `librispeech_dev_clean`?); a manifest path needs a folder or a file extension"]


def test_a_summary_is_read_once_per_version_of_the_file(corpus: Path) -> None:
    first = manifest_summary(corpus)
    assert (first.cuts, first.kept(0.0, 0.0), first.kept(0.5, 0.9), first.kept(1.0, 1.0)) == (2, 2, 0, 2)
    assert manifest_summary(corpus) is first  # opening and describing a manifest read it once
    corpus.write_text(corpus.read_text().splitlines()[0] + "\n")  # edited: read afresh
    assert manifest_summary(corpus).cuts == 1
