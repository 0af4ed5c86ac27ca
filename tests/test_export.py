"""`macasr export`: a bundle loads back as the very model of its checkpoint (frozen, LoRA and fully
trained parts), holds no pickle, its adapters load with peft's own loader, and bad input is one line."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import soundfile as sf
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from macasr import config as config_module, testing
from macasr.cli import app
from macasr.errors import CheckpointError, MacasrError
from macasr.infer import bundle, export
from macasr.infer.transcribe import Transcriber
from macasr.model.build import build_model
from macasr.train import checkpoint

runner = CliRunner()
LORA = {"model.llm.lora.enabled": True, "model.llm.lora.r": 4, "model.encoder.lora.enabled": True, "model.encoder.lora.r": 4}
TRAINED = {"model.encoder.train": True, "model.llm.train": True}  # as the demo: every weight trains


def save_run(cfg, folder: Path) -> Path:
    """best.pt of a model built from `cfg` with every trained weight moved off its initial value."""
    model = build_model(cfg)
    testing.perturb_trainable(model, scale=0.2)
    return checkpoint.save_checkpoint(folder / "best.pt", checkpoint.model_payload(model, cfg, step=7, metrics={"best_wer": 0.25}))


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[Path]:
    """Spoken clips (espeak-ng): the voice activity detector lets them through to the model, so
    transcripts compared between a checkpoint and its bundle are the model's, not the VAD's "". """
    from macasr.data import synth

    root = tmp_path_factory.mktemp("clips")
    paths = [root / f"clip{i}.wav" for i in range(3)]
    for path, text in zip(paths, ("hello world", "one two three", "the cat sat down")):
        sf.write(path, synth.synthesize(text, "en-us"), 16_000)
    return paths


@pytest.fixture(scope="module")
def lora_run(tiny_config, tmp_path_factory) -> Path:
    return save_run(config_module.replace(tiny_config, **LORA), tmp_path_factory.mktemp("lora"))


@pytest.fixture(scope="module")
def lora_bundle(lora_run, tmp_path_factory) -> Path:
    return export.export_bundle(lora_run, tmp_path_factory.mktemp("out") / "bundle", merge_lora=True)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    different = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not different, different[:3]


def transcripts(path: Path, clips: list[Path]) -> list[str | None]:
    return [t.text for t in Transcriber.from_checkpoint(path, "cpu").transcribe(clips)]


def assert_round_trip(ckpt: Path, folder: Path, clips: list[Path]) -> None:
    from_ckpt, from_bundle = checkpoint.restore_model(ckpt, "cpu"), checkpoint.restore_model(folder, "cpu")
    same_weights(from_ckpt.model, from_bundle.model)
    expected = transcripts(ckpt, clips)
    assert all(isinstance(t, str) and t for t in expected)  # decoded text, never the VAD's empty answer
    assert transcripts(folder, clips) == expected


def test_a_lora_bundle_is_the_checkpoints_model(lora_run, lora_bundle, clips) -> None:
    assert_round_trip(lora_run, lora_bundle, clips)
    manifest = json.loads((lora_bundle / bundle.MANIFEST).read_text())
    assert manifest["step"] == 7 and manifest["metrics"] == {"best_wer": 0.25}
    assert {manifest["parts"][p]["weights"] for p in bundle.PARTS} == {"lora"}


@pytest.mark.parametrize("changes", [{}, TRAINED], ids=["frozen", "trained"])
def test_a_bundle_works_after_the_model_folders_are_gone(tiny_models, tiny_config, changes, clips, tmp_path) -> None:
    whisper, qwen = (shutil.copytree(p, tmp_path / "models" / p.name) for p in tiny_models)
    cfg = config_module.replace(tiny_config, **{"model.encoder.path": str(whisper), "model.llm.path": str(qwen), **changes})
    ckpt = save_run(cfg, tmp_path)
    expected_model = checkpoint.restore_model(ckpt, "cpu").model
    expected = transcripts(ckpt, clips)
    folder = export.export_bundle(ckpt, tmp_path / "bundle")
    shutil.rmtree(tmp_path / "models")
    same_weights(expected_model, checkpoint.restore_model(folder, "cpu").model)
    assert transcripts(folder, clips) == expected
    if changes:  # a fully trained part is saved through save_pretrained, as safetensors
        assert (folder / "llm" / "model.safetensors").is_file() and (folder / "encoder" / "model.safetensors").is_file()
        # its weights are the bundle's llm/ folder: pointing the path at the base model would load untrained weights
        with pytest.raises(CheckpointError, match=r"^--set model\.llm\.path=/base/qwen3: .*'s llm was trained in full and "
                                                  r"its weights are the bundle's llm/ folder"):
            checkpoint.restore_model(folder, "cpu", overrides=["model.llm.path=/base/qwen3"])


def test_the_bundle_holds_no_pickle(lora_bundle) -> None:
    files = [p for p in lora_bundle.rglob("*") if p.is_file()]
    assert {p.suffix for p in files} <= {".safetensors", ".json", ".toml", ".md", ".jinja", ".txt", ".model"}
    assert export.pickles(lora_bundle) == []
    for p in files:  # no pickle or torch zip under any name: weights parse as safetensors, the rest is text
        if p.suffix == ".safetensors":
            with safe_open(p, "pt") as f:
                assert list(f.keys()), p
        else:
            p.read_text(encoding="utf-8")
    assert {"adapter_config.json", "adapter_model.safetensors", "connector.safetensors", "config.toml", "README.md"} <= {p.name for p in files}


def llm_logits(llm, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return llm(input_ids=ids).logits


def test_peft_loads_the_adapter_and_the_merged_llm_matches(lora_run, lora_bundle, tiny_models) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    llm = checkpoint.restore_model(lora_run, "cpu").model.llm
    ids = torch.tensor([[5, 17, 42, 9, 3, 60, 11]])
    expected = llm_logits(llm, ids)
    base = AutoModelForCausalLM.from_pretrained(tiny_models[1])
    assert not torch.allclose(llm_logits(base, ids), expected)  # the adapters change the outputs
    peft_llm = PeftModel.from_pretrained(base, str(lora_bundle)).eval()
    torch.testing.assert_close(llm_logits(peft_llm, ids), expected, rtol=0, atol=1e-6)
    merged = AutoModelForCausalLM.from_pretrained(lora_bundle / export.MERGED).eval()
    torch.testing.assert_close(llm_logits(merged, ids), expected, rtol=1e-5, atol=1e-5)
    config = json.loads((lora_bundle / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["task_type"] == "CAUSAL_LM"


def test_the_model_card_names_the_architecture_and_the_reports_wer(lora_run, tmp_path) -> None:
    report = tmp_path / "report.json"
    entry = {"wer": 0.1234, "cer": 0.05, "utterances": 20, "hours": 0.01, "substitutions": 3, "deletions": 1, "insertions": 0,
             "loop_rate": 0.05, "decode_seconds": 3.2, "rtfx": 11.5}
    report.write_text(json.dumps({"normalizer": "basic", "checkpoint": str(lora_run), "decoding": {"num_beams": 4},
                                  "datasets": {"dev-clean": entry}, "overall": {**entry, "wer": 0.1111}}))
    result = runner.invoke(app, ["export", str(lora_run), "--out", str(tmp_path / "b"), "--report", str(report)])
    assert result.exit_code == 0 and "warning" not in result.output, result.output
    card = (tmp_path / "b" / "README.md").read_text()
    assert "| Dataset | Utterances | Hours | WER % | CER % | Sub | Del | Ins | Loops % |" in card  # no timings: they describe a machine
    assert "| dev-clean | 20 | 0.01 | 12.34 | 5.00 | 3 | 1 | 0 | 5.00 |" in card and "| **overall** | 20 | 0.01 | 11.11 |" in card
    assert f"checkpoint `{lora_run}`" in card and "normalizer `basic`" in card and "beam search, 4 beams" in card
    elsewhere = tmp_path / "other.json"
    elsewhere.write_text(report.read_text().replace(str(lora_run), "runs/other/last.pt"))
    other = runner.invoke(app, ["export", str(lora_run), "--out", str(tmp_path / "c"), "--report", str(elsewhere)])
    assert other.exit_code == 0 and "the report scored runs/other/last.pt" in other.output  # a warning, not a refusal
    assert "frozen + LoRA adapters, r = 4" in card and "Steps: 7" in card
    total = sum(p.numel() for p in checkpoint.restore_model(lora_run, "cpu").model.parameters())
    assert f"{total:,}" in card


def one_line_failure(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_bad_inputs_are_one_line(lora_run, lora_bundle, tiny_config, clips, tmp_path) -> None:
    assert "no such checkpoint file" in one_line_failure(["export", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "b")])
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    assert "not empty" in one_line_failure(["export", str(lora_run), "--out", str(busy)])
    assert "not a bundle" in one_line_failure(["export", str(lora_run), "--out", str(busy), "--force"])  # --force replaces bundles only
    assert (busy / "keep.txt").read_text() == "mine"
    message = one_line_failure(["export", str(lora_run), "--out", str(lora_run.parent), "--force"])
    assert "which this export reads" in message and lora_run.is_file()
    assert "not a macasr bundle" in one_line_failure(["transcribe", str(clips[0]), "--ckpt", str(busy), "--device", "cpu"])
    plain = save_run(tiny_config, tmp_path)
    assert "nothing to merge" in one_line_failure(["export", str(plain), "--out", str(tmp_path / "m"), "--merge-lora"])
    assert not (tmp_path / "b").exists() and not (tmp_path / "m").exists()
    (tmp_path / "bad.json").write_text("[1, 2]")
    assert "not a macasr eval report" in one_line_failure(["export", str(lora_run), "--out", str(tmp_path / "c"), "--report", str(tmp_path / "bad.json")])


def test_a_non_bundle_folder_and_a_damaged_bundle_are_refused(lora_bundle, tmp_path) -> None:
    with pytest.raises(CheckpointError, match=r"not a macasr bundle \(no bundle.json; it holds no .pt checkpoint either\)"):
        checkpoint.restore_model(tmp_path, "cpu")
    damaged = shutil.copytree(lora_bundle, tmp_path / "damaged")
    (damaged / bundle.CONNECTOR).unlink()
    with pytest.raises(CheckpointError, match="connector.safetensors: missing from the bundle"):
        checkpoint.restore_model(damaged, "cpu")


def test_a_failed_export_leaves_nothing_and_force_replaces_only_on_success(lora_run, tmp_path, monkeypatch) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / bundle.MANIFEST).write_text("{}")  # an earlier bundle, which --force may replace
    (out / "old.txt").write_text("old")

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("macasr.infer.card.model_card", broken)
    with pytest.raises(OSError, match="disk full"):
        export.export_bundle(lora_run, out, force=True)
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and sorted(p.name for p in out.iterdir()) == [bundle.MANIFEST, "old.txt"]
    monkeypatch.undo()
    export.export_bundle(lora_run, out, force=True)
    assert not (out / "old.txt").exists() and bundle.is_bundle(out)
    umask = os.umask(0)
    os.umask(umask)
    modes = {p.relative_to(out).as_posix(): p.stat().st_mode & 0o777 for p in out.rglob("*") if p.is_file()}
    assert modes[bundle.CONNECTOR] == 0o666 & ~umask and set(modes.values()) == {0o666 & ~umask}  # safetensors writes 0600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary or old folder left


def test_peft_names_round_trip() -> None:
    name = "llm.model.layers.0.self_attn.q_proj.lora_A.default.weight"
    assert bundle.to_peft_name(name, "llm") == "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    assert bundle.from_peft_name(bundle.to_peft_name(name, "llm"), "llm") == name
    enc = "encoder.model.layers.1.self_attn.v_proj.lora_B.default.weight"
    assert bundle.from_peft_name(bundle.to_peft_name(enc, "encoder"), "encoder") == enc


def test_merge_lora_needs_lora_on_the_llm(tiny_config, tmp_path) -> None:
    ckpt = save_run(tiny_config, tmp_path)
    with pytest.raises(MacasrError, match="nothing to merge"):
        export.export_bundle(ckpt, tmp_path / "b", merge_lora=True)


def fake_hub_cache(root: Path, models: dict[str, Path]) -> dict[str, str]:
    """A Hugging Face hub cache (refs/main → snapshots/<commit>/) holding `models` under their ids;
    returns {id: commit}."""
    commits = {}
    for i, (repo_id, folder) in enumerate(models.items()):
        repo = root / f"models--{repo_id.replace('/', '--')}"
        commit = f"{i + 1:x}" * 40
        shutil.copytree(folder, repo / "snapshots" / commit)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(commit)
        commits[repo_id] = commit
    return commits


@pytest.mark.parametrize("llm_changes", [{"model.llm.lora.enabled": True, "model.llm.lora.r": 4}, {"model.llm.train": True}],
                         ids=["lora", "trained"])
def test_hub_models_are_named_with_their_revision_and_copied_only_when_trained(
    tiny_models, tiny_config, llm_changes, clips, tmp_path, monkeypatch
) -> None:
    from huggingface_hub import constants

    commits = fake_hub_cache(tmp_path / "hub", {"tiny/whisper": tiny_models[0], "tiny/qwen3": tiny_models[1]})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    cfg = config_module.replace(tiny_config, **{"model.encoder.path": "tiny/whisper", "model.llm.path": "tiny/qwen3", **llm_changes})
    ckpt = save_run(cfg, tmp_path)
    folder = export.export_bundle(ckpt, tmp_path / "bundle")
    parts = json.loads((folder / bundle.MANIFEST).read_text())["parts"]
    assert parts["encoder"] == {"source": "tiny/whisper", "revision": commits["tiny/whisper"], "folder": None, "weights": "frozen"}
    assert not (folder / "encoder").exists()  # a frozen hub model is named, not copied
    trained = "model.llm.train" in llm_changes
    assert parts["llm"]["revision"] == commits["tiny/qwen3"] and parts["llm"]["folder"] == ("llm" if trained else None)
    assert (folder / "llm" / "tokenizer.json").is_file() == trained
    if not trained:
        adapter = json.loads((folder / "adapter_config.json").read_text())
        assert (adapter["base_model_name_or_path"], adapter["revision"]) == ("tiny/qwen3", commits["tiny/qwen3"])
    assert f"revision {commits['tiny/whisper']}" in (folder / "config.toml").read_text()
    assert_round_trip(ckpt, folder, clips)
    repo = tmp_path / "hub" / "models--tiny--whisper"  # the hub's main moves on after the export
    shutil.copytree(repo / "snapshots" / commits["tiny/whisper"], repo / "snapshots" / ("f" * 40))
    (repo / "refs" / "main").write_text("f" * 40)
    with pytest.warns(UserWarning, match=f"encoder tiny/whisper was exported at revision {commits['tiny/whisper']}, but revision f{{40}} was loaded"):
        checkpoint.restore_model(folder, "cpu")


def test_transcribe_eval_and_the_python_api_take_a_bundle(lora_run, lora_bundle, clips, tmp_path) -> None:
    import macasr

    manifest = tmp_path / "test.jsonl"
    manifest.write_text("".join(json.dumps({"audio": str(c), "text": "hello world", "duration": sf.info(c).duration}) + "\n" for c in clips))
    outputs = {}
    for name, source in (("ckpt", lora_run), ("bundle", lora_bundle)):
        said = runner.invoke(app, ["transcribe", *map(str, clips), "--ckpt", str(source), "--format", "json", "--device", "cpu"])
        scored = runner.invoke(app, ["eval", "--ckpt", str(source), "--manifest", str(manifest), "--device", "cpu",
                                     "--report", str(tmp_path / f"{name}.json")])
        assert said.exit_code == 0 and scored.exit_code == 0, said.output + scored.output
        report = json.loads((tmp_path / f"{name}.json").read_text())
        timing = ("decode_seconds", "rtfx")  # wall-clock figures, never equal between two runs
        outputs[name] = ([json.loads(line)["text"] for line in said.stdout.splitlines()],
                         {k: v for k, v in report["overall"].items() if k not in timing})
    assert all(outputs["ckpt"][0]) and outputs["ckpt"][1]["no_speech_clips"] == 0
    assert outputs["bundle"] == outputs["ckpt"]
    assert [t.text for t in macasr.load(str(lora_bundle), "cpu").transcribe(clips)] == outputs["ckpt"][0]


def test_pickled_weights_never_enter_a_bundle(lora_run, tiny_models, tmp_path, monkeypatch) -> None:
    pickled = shutil.copytree(tiny_models[1], tmp_path / "pickled")
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    source = export.PartSource("llm", str(pickled), pickled, True, None, "frozen")
    with pytest.raises(CheckpointError, match=r"pickled.*holds no \.safetensors weights"):
        export.write_part(tmp_path / "part", source, None, code=False)
    assert not (tmp_path / "part" / "pytorch_model.bin").exists()
    write = export.write_bundle
    monkeypatch.setattr(export, "write_bundle", lambda root, *a: (write(root, *a), (root / "llm" / "extra.bin").write_bytes(b"x")))
    with pytest.raises(CheckpointError, match=r"llm/extra.bin would be a pickle file"):
        export.export_bundle(lora_run, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part", "pickled"]
