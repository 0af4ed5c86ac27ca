"""`macasr eval` on awkward inputs: same-named manifests, unreadable clips, bad report paths."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import soundfile as sf
from typer.testing import CliRunner

from conftest import noise
from macasr import config as config_module
from macasr.cli import app
from macasr.errors import ConfigError
from macasr.evaluate import run as run_module
from macasr.model.build import build_model
from macasr.train import checkpoint

runner = CliRunner()


@pytest.fixture(scope="module")
def ckpt(tiny_config, tmp_path_factory) -> Path:
    model = build_model(tiny_config)
    return checkpoint.save_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt", checkpoint.model_payload(model, tiny_config))


def _manifest(path: Path, clips: dict[str, bool]) -> Path:
    """A manifest of `clips` (name -> readable?) beside it; unreadable ones are not written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for name, readable in clips.items():
        if readable:
            sf.write(path.parent / name, noise(0.5), 16_000)
        lines.append(json.dumps({"audio": name, "text": "hello world", "duration": 0.5}))
    path.write_text("\n".join(lines) + "\n")
    return path


def _eval(ckpt: Path, *args: str | Path):
    return runner.invoke(app, ["eval", "--ckpt", str(ckpt), *map(str, args)])


def test_manifests_with_the_same_file_name_are_two_datasets(ckpt: Path, tmp_path: Path) -> None:
    a = _manifest(tmp_path / "a" / "test.jsonl", {"x.wav": True})
    b = _manifest(tmp_path / "b" / "test.jsonl", {"y.wav": True, "z.wav": True})
    result = _eval(ckpt, "--manifest", a, "--manifest", b, "--report", tmp_path / "r.json", "--normalizer", "english")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["normalizer"] == "english" and "normalizer: english" in result.stdout
    assert report["decoding"]["num_beams"] == 1 and report["decoding"]["repeat_ngram_stop"] == 8  # how it was decoded
    datasets = report["datasets"]
    assert {name: d["utterances"] for name, d in datasets.items()} == {"a/test": 1, "b/test": 2}
    assert "a/test" in result.stdout and "b/test" in result.stdout


def test_a_file_named_by_dataset_and_by_manifest_is_scored_once(tiny_config, tmp_path: Path) -> None:
    test = str(tmp_path / "data" / "test.jsonl")
    cfg = config_module.replace(tiny_config, datasets={"test": config_module.DatasetConfig(manifest=[test])})
    same = str(tmp_path / "data" / ".." / "data" / "test.jsonl")
    assert run_module.named_sets(cfg, [same, test], ["test", "test"]) == {"test": [test]}


def test_named_sets_keeps_every_input_distinct(tiny_config, tmp_path: Path) -> None:
    cfg = config_module.replace(tiny_config, datasets={"test": config_module.DatasetConfig(manifest=[str(tmp_path / "cfg.jsonl")])})
    a, b = str(tmp_path / "a" / "test.jsonl"), str(tmp_path / "b" / "test.jsonl")
    assert run_module.named_sets(cfg, [a], ["test"]) == {"test": [str(tmp_path / "cfg.jsonl")], "a/test": [a]}
    assert run_module.named_sets(cfg, [a, b, a], []) == {"a/test": [a], "b/test": [b]}  # the same file once
    deep = [str(tmp_path / "x" / "a" / "test.jsonl"), str(tmp_path / "y" / "a" / "test.jsonl")]
    assert list(run_module.named_sets(cfg, deep, [])) == ["x/a/test", "y/a/test"]
    assert list(run_module.named_sets(cfg, [a], [])) == ["test"]
    with pytest.raises(ConfigError, match="no dataset named"):
        run_module.named_sets(cfg, [], ["nope"])


def test_unreadable_clips_are_counted_and_a_dataset_with_none_fails(ckpt: Path, tmp_path: Path) -> None:
    good = _manifest(tmp_path / "good.jsonl", {"g1.wav": True, "g2.wav": False})
    gone = _manifest(tmp_path / "gone.jsonl", {"u1.wav": False, "u2.wav": False})
    result = _eval(ckpt, "--manifest", good, "--manifest", gone, "--report", tmp_path / "r.json")
    assert result.exit_code == 1, result.output
    errors = result.stderr.splitlines()
    assert errors[-1] == "error: gone: no utterance could be scored (2 clips skipped as unreadable)"
    assert sum(line.startswith("skipped: ") for line in errors) == 3
    assert any("g2.wav" in line for line in errors)
    header = next(line for line in result.stdout.splitlines() if "Dataset" in line)
    row = next(line for line in result.stdout.splitlines() if "gone" in line)
    cells = dict(zip((c.strip() for c in header.strip("┃ ").split("┃")), (c.strip() for c in row.strip("│ ").split("│"))))
    # Utts, Skip, 0 hours, but no 0.00 % WER
    assert [cells[k] for k in ("Dataset", "Utts", "Skip", "Hours", "WER %", "CER %")] == ["gone", "0", "2", "0.00", "n/a", "n/a"]
    assert "skipped clips: 3" in result.stdout
    rep = json.loads((tmp_path / "r.json").read_text())  # written before exiting 1
    assert rep["datasets"]["good"]["utterances"] == 1 and rep["datasets"]["good"]["skipped"] == 1
    assert any("g2.wav" in line for line in rep["datasets"]["good"]["skipped_clips"])
    assert rep["datasets"]["gone"]["wer"] is None and rep["datasets"]["gone"]["skipped"] == 2
    assert rep["overall"]["skipped"] == 3


def test_on_bad_clip_error_stops_at_the_first_unreadable_clip(ckpt: Path, tmp_path: Path) -> None:
    manifest = _manifest(tmp_path / "m.jsonl", {"ok.wav": True, "gone.wav": False})
    result = _eval(ckpt, "--manifest", manifest, "--on-bad-clip", "error")
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "gone.wav" in lines[0], result.stderr
    bad = _eval(ckpt, "--manifest", manifest, "--on-bad-clip", "maybe")
    assert bad.exit_code == 1 and "on_bad_clip" in bad.stderr and "maybe" in bad.stderr


def test_on_bad_clip_skip_overrides_the_config(ckpt: Path, tiny_config, tmp_path: Path) -> None:
    manifest = _manifest(tmp_path / "m.jsonl", {"ok.wav": True, "gone.wav": False})
    strict = config_module.dump(config_module.replace(tiny_config, **{"data.on_bad_clip": "error"}), tmp_path / "c.toml")
    assert _eval(ckpt, "--config", strict, "--manifest", manifest).exit_code == 1
    result = _eval(ckpt, "--config", strict, "--manifest", manifest, "--on-bad-clip", "skip")
    assert result.exit_code == 0, result.output
    assert "gone.wav" in result.stderr


@pytest.mark.parametrize("where", ["folder", "under_a_file", "the_checkpoint"])
def test_report_path_is_refused_before_decoding(where: str, ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = _manifest(tmp_path / "m.jsonl", {"ok.wav": True})
    ckpt = Path(shutil.copy(ckpt, tmp_path / "ck.pt"))  # a copy: a failing test must not ruin the shared one
    report = {"folder": tmp_path, "under_a_file": manifest / "r.json", "the_checkpoint": ckpt}[where]

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoding started before the report path was checked")

    monkeypatch.setattr(run_module, "evaluate_sets", never)
    result = _eval(ckpt, "--manifest", manifest, "--report", report)
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: report {report}:"), result.stderr


def test_clip_warnings_are_printed(ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = _manifest(tmp_path / "m.jsonl", {"ok.wav": True})
    real = run_module.decode_loader

    def with_warning(*args: object, **kwargs: object):
        decoded = real(*args, **kwargs)
        decoded.warnings.append("ok.wav: read 0.5 s, manifest says 9.0 s")
        return decoded

    monkeypatch.setattr(run_module, "decode_loader", with_warning)
    result = _eval(ckpt, "--manifest", manifest, "--report", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    assert "warning: ok.wav: read 0.5 s, manifest says 9.0 s" in result.stderr.splitlines()
    assert json.loads((tmp_path / "r.json").read_text())["datasets"]["m"]["warnings"] == ["ok.wav: read 0.5 s, manifest says 9.0 s"]


def test_every_manifest_is_read_before_decoding(ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = _manifest(tmp_path / "good.jsonl", {"ok.wav": True})
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{not json\n")

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded a dataset before every manifest was read")

    monkeypatch.setattr(run_module, "evaluate_cuts", never)
    result = _eval(ckpt, "--manifest", good, "--manifest", broken)
    assert result.exit_code == 1 and f"{broken}:1" in result.stderr


def test_prepared_manifests_are_named_without_their_extensions(tiny_config, tmp_path: Path) -> None:
    # `data prepare` writes NAME.jsonl.gz: the dataset is NAME, as test.jsonl is test.
    paths = [str(tmp_path / "librispeech_dev-clean.jsonl.gz"), str(tmp_path / "cv" / "test.jsonl"), str(tmp_path / "shar")]
    assert list(run_module.named_sets(tiny_config, paths, [])) == ["librispeech_dev-clean", "test", "shar"]


def test_ids_shared_by_two_manifests_of_one_dataset_are_told_apart() -> None:
    # Default ids are STEM-LINE, so a/test.jsonl and b/test.jsonl of one dataset share them; the
    # per-utterance report is keyed by id, so each manifest's ids get its distinct name as a prefix.
    from lhotse.testing.dummies import dummy_cut
    from lhotse.utils import fastcopy

    a = [fastcopy(dummy_cut(i), id=f"test-00000{i + 1}") for i in range(2)]
    b = [fastcopy(dummy_cut(0), id="test-000001")]
    merged = run_module._unique_ids([a, b], [Path("/d/a/test.jsonl"), Path("/d/b/test.jsonl")])
    assert [c.id for c in merged] == ["a/test/test-000001", "a/test/test-000002", "b/test/test-000001"]
    assert [c.id for c in run_module._unique_ids([a], [Path("/d/a/test.jsonl")])] == ["test-000001", "test-000002"]
