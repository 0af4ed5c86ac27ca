"""`macasr inspect`: speech embeddings against the LLM's token embeddings (macasr/infer/inspect.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from conftest import noise
from macasr.audio import SAMPLE_RATE
from macasr.cli import app
from macasr.config import Config


@pytest.fixture
def ckpt(tiny_config: Config, tmp_path: Path) -> Path:
    from macasr.model.build import build_model
    from macasr.train import checkpoint

    return checkpoint.save_checkpoint(tmp_path / "best.pt", checkpoint.model_payload(build_model(tiny_config), tiny_config))


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    for n, seconds in enumerate((1.0, 1.6)):
        sf.write(tmp_path / f"clip{n}.wav", noise(seconds, seed=n), SAMPLE_RATE)
    path = tmp_path / "test.jsonl"
    path.write_text('{"audio": "clip0.wav", "text": "the cat sat", "duration": 1.0}\n'
                    '{"audio": "clip1.wav", "text": "a dog ran home", "duration": 1.6}\n')
    return path


def _run(ckpt: Path, source: Path, out: Path) -> tuple[str, dict]:
    result = CliRunner().invoke(app, ["inspect", str(ckpt), str(source), "--out", str(out), "--device", "cpu", "--top-k", "3"])
    assert result.exit_code == 0, result.output
    return result.output, json.loads((out / "inspect.json").read_text())


def test_inspect_manifest_numbers_heatmaps_and_reproducible(ckpt: Path, manifest: Path, tmp_path: Path) -> None:
    """Per-utterance numbers agree with each other and with the model's token embeddings; a PNG per
    utterance; a second run writes the same JSON."""
    from macasr.model.llm import text_ids
    from macasr.train.checkpoint import restore_model

    output, data = _run(ckpt, manifest, tmp_path / "a")
    _, again = _run(ckpt, manifest, tmp_path / "b")
    assert data["utterances"] == again["utterances"] and data["summary"] == again["summary"]
    model = restore_model(ckpt, "cpu").model
    table = model.llm.get_input_embeddings().weight.detach().float()
    records = data["utterances"]
    assert [r["reference"] for r in records] == ["the cat sat", "a dog ran home"]
    for r in records:
        assert (tmp_path / "a" / r["heatmap"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert r["speech_embeddings"] == len(r["embeddings"]) > 0
        assert r["token_norm_mean"] == pytest.approx(float(table.norm(dim=-1).mean()), abs=1e-5)
        assert r["norm_ratio"] == pytest.approx(r["speech_norm_mean"] / r["token_norm_mean"], rel=1e-4)
        wanted = set(text_ids(model.tokenizer, r["reference"]))
        assert r["reference_tokens"] == [model.tokenizer.decode([i]) for i in text_ids(model.tokenizer, r["reference"])]
        hits = [e["nearest"][0]["id"] in wanted for e in r["embeddings"]]
        assert r["nearest_in_transcript"] == pytest.approx(sum(hits) / len(hits), abs=1e-6)
        for e in r["embeddings"]:
            cosines = [t["cosine"] for t in e["nearest"]]
            assert len(cosines) == 3 and cosines == sorted(cosines, reverse=True) and all(-1 <= c <= 1 for c in cosines)
        starts = [e["start"] for e in r["embeddings"]]
        assert starts[0] == 0 and starts == sorted(starts) and starts[-1] < r["duration"]
    assert data["summary"] == {
        "utterances": 2, "utterances_with_reference": 2,
        "mean_nearest_cosine": pytest.approx(sum(r["nearest_cosine_mean"] for r in records) / 2, abs=1e-6),
        "mean_norm_ratio": pytest.approx(sum(r["norm_ratio"] for r in records) / 2, abs=1e-6),
        "nearest_in_transcript": pytest.approx(sum(r["nearest_in_transcript"] for r in records) / 2, abs=1e-6),
    }
    assert "nearest cosine" in output


def test_inspect_cut_against_direct_cosines(ckpt: Path, manifest: Path) -> None:
    """The similarity matrix is cosine(speech embedding, transcript token embedding), (N, M); the
    nearest vocabulary token is never farther than the best transcript token; N is the connector's length."""
    from macasr.infer.inputs import expand
    from macasr.infer.inspect import inspect_cut, speech_embeddings
    from macasr.model.llm import text_ids
    from macasr.train.checkpoint import restore_model

    restored = restore_model(ckpt, "cpu")
    model, cut = restored.model, expand([manifest])[1].cut
    result = inspect_cut(model, cut, "a dog ran home", restored.device, restored.precision, top_k=4)
    speech = speech_embeddings(model, cut, restored.device, restored.precision)[0].cpu()
    ids = text_ids(model.tokenizer, "a dog ran home")
    table = model.llm.get_input_embeddings().weight.detach().float()
    expected = torch.nn.functional.cosine_similarity(speech[:, None, :], table[ids][None, :, :], dim=-1)
    assert result.similarity is not None and result.similarity.shape == (len(speech), len(ids))
    torch.testing.assert_close(result.similarity, expected, atol=1e-5, rtol=1e-5)
    assert (result.nearest_cos[:, 0] >= result.similarity.max(dim=1).values - 1e-5).all()
    frames, lengths = model.encoder(*_features(model, cut))
    assert len(speech) == int(model.connector(frames, lengths)[1][0])


def _features(model, cut):
    from macasr.data.collate import collate
    from macasr.data.loader import CutDataset

    batch = collate([CutDataset(model.encoder.featurizer).example(cut)])
    return batch.features, batch.feature_lengths


def test_inspect_audio_file_has_no_reference(ckpt: Path, manifest: Path, tmp_path: Path) -> None:
    output, data = _run(ckpt, manifest.with_name("clip1.wav"), tmp_path / "one")
    (record,) = data["utterances"]
    assert record["reference"] is None and "heatmap" not in record and "nearest_in_transcript" not in record
    assert data["summary"]["nearest_in_transcript"] is None and data["summary"]["utterances_with_reference"] == 0
    assert "no reference transcript" in output
    assert not list((tmp_path / "one").glob("*.png"))


def test_inspect_without_matplotlib_writes_json_and_says_so(ckpt: Path, manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib → ImportError
    output, data = _run(ckpt, manifest, tmp_path / "plain")
    assert "pip install 'macasr[plots]'" in output
    assert data["summary"]["utterances"] == 2 and all(r["heatmap"] is None for r in data["utterances"])
    assert not list((tmp_path / "plain").glob("*.png"))


def test_inspect_max_utterances_and_missing_input(ckpt: Path, manifest: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["inspect", str(ckpt), str(manifest), "--out", str(tmp_path / "o"), "--max-utterances", "1", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "o" / "inspect.json").read_text())["summary"]["utterances"] == 1
    rows = len(manifest.read_text().splitlines())
    assert f"note: the first 1 utterance inspected (--max-utterances); {rows - 1} more in the inputs were not" in " ".join(result.stderr.split())
    result = CliRunner().invoke(app, ["inspect", str(ckpt), str(tmp_path / "nope.wav"), "--out", str(tmp_path / "m"), "--device", "cpu"])
    assert result.exit_code == 1 and "nope.wav" in result.output and len(result.output.strip().splitlines()) == 1


def _several(tmp_path: Path, manifest: Path) -> list[str]:
    """Two manifests of the same name and cut ids in different folders, two audio files of the same
    stem in different folders (one given as a folder, one as a pattern)."""
    for folder in ("x", "y", "a", "b"):
        (tmp_path / folder).mkdir()
    for folder in ("x", "y"):
        for clip in ("clip0.wav", "clip1.wav"):
            (tmp_path / folder / clip).write_bytes((tmp_path / clip).read_bytes())
        (tmp_path / folder / "test.jsonl").write_text(manifest.read_text())
    for n, folder in enumerate(("a", "b")):
        sf.write(tmp_path / folder / "talk.wav", noise(1.2, seed=5 + n), SAMPLE_RATE)
    return [str(tmp_path / "x" / "test.jsonl"), str(tmp_path / "a"), str(tmp_path / "b" / "*.wav"), str(tmp_path / "y" / "test.jsonl")]


def test_inspect_several_inputs(ckpt: Path, manifest: Path, tmp_path: Path) -> None:
    """Manifests, a folder and a pattern in one run: every utterance in input order, heatmaps of
    same-named rows in different folders kept apart, the transcript rate over those with a reference,
    and the same bytes from a second run."""
    inputs = _several(tmp_path, manifest)
    args = ["inspect", str(ckpt), *inputs, "--device", "cpu", "--top-k", "3"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "o1")])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "o1" / "inspect.json").read_text())
    records = data["utterances"]
    assert data["inputs"] == inputs
    assert [r["reference"] for r in records] == ["the cat sat", "a dog ran home", None, None, "the cat sat", "a dog ran home"]
    assert [r["id"] for r in records][2:4] == [str(tmp_path / "a" / "talk.wav"), str(tmp_path / "b" / "talk.wav")]
    heatmaps = [r["heatmap"] for r in records if r["reference"] is not None]
    assert [h.split("/")[0] for h in heatmaps] == ["x", "x", "y", "y"]  # named after the row, with the folder telling them apart
    assert len(set(heatmaps)) == 4 and all((tmp_path / "o1" / h).read_bytes()[:4] == b"\x89PNG" for h in heatmaps)
    assert sorted(str(p.relative_to(tmp_path / "o1")) for p in (tmp_path / "o1").rglob("*.png")) == sorted(heatmaps)
    assert all("heatmap" not in r and "nearest_in_transcript" not in r and r["speech_embeddings"] > 0 for r in records[2:4])
    with_reference = [r["nearest_in_transcript"] for r in records if r["reference"] is not None]
    assert data["summary"]["utterances"] == 6 and data["summary"]["utterances_with_reference"] == 4
    assert data["summary"]["nearest_in_transcript"] == pytest.approx(sum(with_reference) / 4, abs=1e-6)
    assert data["summary"]["mean_norm_ratio"] == pytest.approx(sum(r["norm_ratio"] for r in records) / 6, abs=1e-6)
    assert "over the 4 of 6 utterances with a reference transcript" in " ".join(result.output.split())
    again = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "o2")])
    assert again.exit_code == 0, again.output
    assert (tmp_path / "o2" / "inspect.json").read_bytes() == (tmp_path / "o1" / "inspect.json").read_bytes()
    assert all((tmp_path / "o2" / h).read_bytes() == (tmp_path / "o1" / h).read_bytes() for h in heatmaps)


@pytest.mark.parametrize("bad, said", [
    ("missing.wav", "missing.wav: no such audio file"),
    ("empty", "empty: no audio files in this folder"),
    ("none/*.flac", "none/*.flac: no file matches this pattern"),
    ("empty.jsonl", "empty.jsonl: manifest has no utterances"),
])
def test_a_bad_input_among_several_fails_before_the_model_loads(ckpt: Path, manifest: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch, bad: str, said: str) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty.jsonl").write_text("")

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr("macasr.train.checkpoint.restore_model", no_model)
    result = CliRunner().invoke(app, ["inspect", str(ckpt), str(manifest), str(tmp_path / bad), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1, result.output
    assert len(result.output.strip().splitlines()) == 1 and f"{tmp_path / said}" in " ".join(result.output.split())
    assert not (tmp_path / "o").exists()


def test_several_bad_inputs_name_the_first_and_count_the_others(ckpt: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["inspect", str(ckpt), str(tmp_path / "a.wav"), str(tmp_path / "b.wav"), str(tmp_path / "c.wav")])
    assert result.exit_code == 1, result.output
    assert " ".join(result.output.split()) == f"error: {tmp_path / 'a.wav'}: no such audio file (and 2 more inputs that cannot be used)"


def test_rows_of_shell_commands_need_allow_commands(ckpt: Path, manifest: Path, tmp_path: Path) -> None:
    """The pre-check before the model loads reads no audio; such a row is refused once the
    checkpoint's config says commands are off, and runs when --set allows them."""
    from lhotse import CutSet
    from lhotse.audio import AudioSource
    from lhotse.utils import fastcopy

    from macasr.data.manifest import open_cuts

    cut = next(iter(open_cuts(manifest)))
    marker = tmp_path / "ran"
    recording = fastcopy(cut.recording, sources=[AudioSource(type="command", channels=[0], source=f"touch {marker}; cat {tmp_path / 'clip0.wav'}")])
    path = tmp_path / "cmd.jsonl.gz"
    CutSet.from_cuts([fastcopy(cut, recording=recording, custom={})]).to_file(path)
    args = ["inspect", str(ckpt), str(path), "--device", "cpu"]
    refused = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "no")])
    assert refused.exit_code == 1 and "[data] allow_commands = true" in " ".join(refused.output.split())
    assert not marker.exists() and not (tmp_path / "no").exists()
    allowed = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "yes"), "--set", "data.allow_commands=true"])
    assert allowed.exit_code == 0, allowed.output
    assert marker.exists() and json.loads((tmp_path / "yes" / "inspect.json").read_text())["summary"]["utterances_with_reference"] == 1


def test_a_bad_row_counts_only_among_the_utterances_inspected(ckpt: Path, manifest: Path, tmp_path: Path) -> None:
    """--max-utterances 2 never reads row 3, so its missing audio is no error; a missing input file is, wherever it comes."""
    rows = tmp_path / "rows.jsonl"
    rows.write_text(manifest.read_text() + '{"audio": "gone.wav", "text": "x", "duration": 1.0}\n')
    args = ["inspect", str(ckpt), str(rows), "--device", "cpu", "--out", str(tmp_path / "o")]
    result = CliRunner().invoke(app, [*args, "--max-utterances", "2"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and f"{tmp_path / 'gone.wav'}: no such audio file (manifest {rows}:3)" in " ".join(result.output.split())
    result = CliRunner().invoke(app, [*args, "--max-utterances", "2", str(tmp_path / "nope.wav")])
    assert result.exit_code == 1 and f"{tmp_path / 'nope.wav'}: no such audio file" in result.output


def test_inspect_into_an_earlier_output_needs_force_and_clears_it(ckpt: Path, manifest: Path, tmp_path: Path) -> None:
    """A second inspect into the same --out is refused without --force (before the model loads);
    with it, the earlier heatmaps go, so none is left beside the new ones."""
    out = tmp_path / "o"
    _, first = _run(ckpt, manifest, out)
    stale = out / "old" / "stale.png"  # an earlier inspect of other inputs
    stale.parent.mkdir()
    stale.write_bytes(b"png")
    args = ["inspect", str(ckpt), str(manifest), "--out", str(out), "--device", "cpu", "--top-k", "3"]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 1 and " ".join(refused.output.split()) == (
        f"error: --out {out}: holds an earlier inspect's output (inspect.json); give a new or empty folder, or --force to replace it")
    assert stale.exists()
    replaced = CliRunner().invoke(app, [*args, "--force"])
    assert replaced.exit_code == 0, replaced.output
    assert not stale.exists() and not stale.parent.exists()
    assert sorted(p.name for p in out.rglob("*")) == sorted(["inspect.json", *(r["heatmap"] for r in first["utterances"])])
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    for target, message in ((other, f"--out {other}: the folder holds files but no inspect.json"), (manifest, f"--out {manifest}: is a file")):
        result = CliRunner().invoke(app, [*args[:3], "--out", str(target), "--force"])
        assert result.exit_code == 1 and message in " ".join(result.output.split()), result.output
    assert (other / "notes.txt").read_text() == "mine"


class _Tokenizer:
    """Decodes single tokens as the real ones do: byte-level BPE keeps the space ("Ġhave" → " have"),
    SentencePiece drops it ("▁have" → "have")."""

    def __init__(self, tokens: list[str], space_kept: bool) -> None:
        self.tokens, self.space_kept = tokens, space_kept

    def convert_ids_to_tokens(self, token_id: int) -> str:
        return self.tokens[token_id]

    def decode(self, ids: list[int]) -> str:
        token = self.tokens[ids[0]]
        return token.replace("Ġ", " " if self.space_kept else "").replace("▁", "").replace("Ċ", "\n")


def test_heatmap_labels_mark_word_starts() -> None:
    from macasr.infer.inspect import token_labels

    byte_level = _Tokenizer(["yo", "u", "Ġhave", "Ġf", "ive", "Ċ"], space_kept=True)
    sentencepiece = _Tokenizer(["▁yo", "u", "▁have", "▁f", "ive", "Ċ"], space_kept=False)
    for tokenizer in (byte_level, sentencepiece):
        assert token_labels(tokenizer, range(6)) == ["▁yo", "u", "▁have", "▁f", "ive", "\\n"]


def test_heatmap_is_centred_on_zero_names_its_numbers_and_is_reproducible(ckpt: Path, manifest: Path, tmp_path: Path) -> None:
    from macasr.infer.inspect import checked_sources, draw_heatmap, inspect_cut, token_labels
    from macasr.train.checkpoint import restore_model

    restored = restore_model(ckpt, "cpu")
    cut = checked_sources([str(manifest)], allow_commands=False)[0].cut
    result = inspect_cut(restored.model, cut, "the cat sat", restored.device, restored.precision, 3)
    figure = draw_heatmap(result, restored.model.tokenizer, tmp_path / "a.png")
    draw_heatmap(result, restored.model.tokenizer, tmp_path / "b.png")
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    ax = figure.axes[0]
    (image,) = ax.images
    vmin, vmax = image.get_clim()
    assert vmin == -vmax and vmax == pytest.approx(float(result.similarity.abs().max())) and image.get_cmap().name == "RdBu_r"
    assert f"norm ratio (speech / token) {result.norm_ratio:.3f}" in ax.get_title()
    assert f"mean nearest-token cosine {float(result.nearest_cos[:, 0].mean()):.3f}" in ax.get_title()
    assert [t.get_text() for t in ax.get_yticklabels()] == token_labels(restored.model.tokenizer, result.reference_ids)


def test_a_long_utterance_id_is_folded_not_cut(ckpt: Path, manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    deep = tmp_path / ("a_rather_long_folder_name_" * 3) / "clip_with_a_long_name.wav"
    deep.parent.mkdir()
    deep.write_bytes(manifest.with_name("clip1.wav").read_bytes())
    monkeypatch.setenv("COLUMNS", "80")
    output, data = _run(ckpt, deep, tmp_path / "one")
    (record,) = data["utterances"]
    assert len(record["id"]) > 60 and "…" not in output
    cells = [line.split("│")[1].strip() for line in output.splitlines() if line.count("│") > 2]
    assert record["id"] in "".join(cells)
