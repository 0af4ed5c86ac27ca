"""Checkpoint files: the modes they get, and a one-line CheckpointError for every way one can be wrong."""

from __future__ import annotations

import os
import pickle
import shutil
import stat
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from macasr import config as config_module, testing
from macasr.cli import app
from macasr.errors import CheckpointError
from macasr.evaluate.report import write_report
from macasr.fileio import atomic_open, write_atomic
from macasr.model.build import build_model
from macasr.train import checkpoint

runner = CliRunner()


class _RunsCode:
    """Unpickling this calls os.system: the kind of file weights_only=True exists to refuse."""

    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.fixture
def umask():
    """Set a known umask for the test, restore the caller's after."""
    previous = os.umask(0o022)
    yield os.umask
    os.umask(previous)


@pytest.fixture(scope="module")
def saved(tiny_config, tmp_path_factory) -> Path:
    """A valid best.pt of the tiny model, with perturbed (non-initial) weights."""
    model = build_model(tiny_config)
    testing.perturb_trainable(model)
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    return checkpoint.save_checkpoint(path, checkpoint.model_payload(model, tiny_config, step=1))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ----------------------------------------------------------------------------- writing


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_checkpoints_and_reports_get_the_umask_mode(umask, mask, tiny_config, tmp_path) -> None:
    umask(mask)
    ckpt = checkpoint.save_checkpoint(tmp_path / "best.pt", checkpoint.model_payload(build_model(tiny_config), tiny_config))
    report, utterances = write_report(tmp_path / "report.json", [], "basic")
    text = write_atomic(tmp_path / "notes.txt", "ok")
    for path in (ckpt, report, utterances, text):
        assert mode(path) == 0o666 & ~mask, path.name


def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path) -> None:
    target = write_atomic(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError), atomic_open(target) as f:
        f.write(b"half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_no_checkpoint_is_written_with_nonfinite_weights(tiny_config, tmp_path) -> None:
    model = build_model(tiny_config)
    name, param = next((n, p) for n, p in model.named_parameters() if p.requires_grad)
    with torch.no_grad():
        param[0].fill_(float("nan"))
    with pytest.raises(CheckpointError, match=rf"best.pt: not written: weight {name} holds NaN"):
        checkpoint.save_checkpoint(tmp_path / "best.pt", checkpoint.model_payload(model, tiny_config))
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- reading: the file


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_a_folder_is_reported_as_a_folder(saved, tmp_path) -> None:
    with pytest.raises(CheckpointError) as error:
        checkpoint.load_checkpoint(saved.parent)
    assert "is a folder, not a checkpoint file (it holds best.pt)" in one_line(error)
    with pytest.raises(CheckpointError, match="is a folder.*it holds no .pt file"):
        checkpoint.load_checkpoint(tmp_path)


def test_missing_empty_truncated_and_foreign_files(saved, tmp_path) -> None:
    with pytest.raises(CheckpointError, match="missing.pt: no such checkpoint file"):
        checkpoint.load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "empty.pt").touch()
    with pytest.raises(CheckpointError, match=r"empty.pt: the checkpoint file is empty \(0 bytes\)"):
        checkpoint.load_checkpoint(tmp_path / "empty.pt")
    data = saved.read_bytes()
    unreadable = "not a readable checkpoint, truncated or corrupted ("
    for name, content, expected in [
        ("half.pt", data[: len(data) // 2], unreadable), ("head.pt", data[:20], unreadable),
        ("tail.pt", data[:-30], unreadable),
        # Neither a zip archive nor a pickle: named as such, not as unsafe or corrupted.
        ("text.pt", b"hello", "not a checkpoint file (torch checkpoints are zip archives; this one starts with b'hell')"),
        ("config.toml", b"[model.encoder]\n", "not a checkpoint file (torch checkpoints are zip archives"),
        ("noise.pt", bytes(range(256)) * 4, "not a checkpoint file"),
    ]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError) as error:
            checkpoint.load_checkpoint(tmp_path / name)
        assert f"{name}: {expected}" in one_line(error)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="foreign.pt: not a macasr checkpoint"):
        checkpoint.load_checkpoint(foreign)


def test_torch_messages_are_quoted_up_to_a_full_sentence(saved, tmp_path) -> None:
    cut = tmp_path / "cut.pt"
    cut.write_bytes(saved.read_bytes()[:1000])
    with pytest.raises(CheckpointError) as error:
        checkpoint.load_checkpoint(cut)
    # torch's message goes on for several sentences; the quote ends where its first one does.
    assert one_line(error).endswith("failed finding central directory.)")


@pytest.mark.parametrize("protocol", [2, 4, "torch"])
def test_an_unsafe_pickle_is_refused_in_one_line_without_warnings(protocol, tmp_path, recwarn) -> None:
    evil = tmp_path / "evil.pt"
    payload = {"format": checkpoint.FORMAT, "model": _RunsCode()}
    if protocol == "torch":
        torch.save(payload, evil)
    else:
        evil.write_bytes(pickle.dumps(payload, protocol=protocol))
    with pytest.raises(CheckpointError) as error:
        checkpoint.load_checkpoint(evil)
    message = one_line(error)
    assert "evil.pt: refused by the safe loader: the file holds more than tensors" in message and "never runs code" in message
    assert "weights_only" not in message and "False" not in message  # never the advice to turn the check off
    assert not recwarn.list, [str(w.message) for w in recwarn]


def test_an_unsafe_pickle_through_the_cli_prints_only_the_refusal(tmp_path) -> None:
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"x": _RunsCode()}, protocol=4))
    result = runner.invoke(app, ["eval", "--ckpt", str(evil), "--manifest", str(evil)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "refused" in lines[0], result.output
    assert "Warning" not in result.output and "weights_only" not in result.output


# ----------------------------------------------------------------------------- reading: the content


def test_a_checkpoint_that_lacks_a_part_says_which(saved, tmp_path) -> None:
    data = torch.load(saved, weights_only=True)
    del data["model"], data["step"]
    torch.save(data, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match="partial.pt: lacks model, step, needed for any use"):
        checkpoint.restore_model(tmp_path / "partial.pt", "cpu")


def test_nonfinite_weights_are_refused_at_load(saved, tmp_path) -> None:
    data = torch.load(saved, weights_only=True)
    name = next(iter(data["model"]))
    data["model"][name][0] = float("inf")
    torch.save(data, tmp_path / "diverged.pt")
    with pytest.raises(CheckpointError, match=rf"diverged.pt: weight {name} holds NaN or infinite values"):
        checkpoint.restore_model(tmp_path / "diverged.pt", "cpu")


def test_a_wider_model_behind_the_same_folder_is_one_line(tiny_config, tiny_models, tmp_path) -> None:
    """The LLM folder a checkpoint names now holds a wider model: name the weight and both shapes."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_models[1])
    llm = testing.save_tiny_qwen3(tmp_path / "llm", tokenizer, hidden=32)
    cfg = config_module.replace(tiny_config, **{"model.llm.path": str(llm)})
    path = checkpoint.save_checkpoint(tmp_path / "best.pt", checkpoint.model_payload(build_model(cfg), cfg))
    shutil.rmtree(llm)
    testing.save_tiny_qwen3(llm, tokenizer, hidden=48)
    with pytest.raises(CheckpointError) as error:
        checkpoint.restore_model(path, "cpu")
    message = one_line(error)
    assert message.startswith(f"{path}: weight connector.")
    assert "has shape [32, 64] in the checkpoint but [48, 64] in the model built from its stored config" in message
    result = runner.invoke(app, ["transcribe", str(path), "--ckpt", str(path)])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output


def test_weights_for_a_different_set_of_trained_parts(saved, tiny_config) -> None:
    """A connector-only checkpoint cannot fill a model that also trains its LLM, and the reverse."""
    state = torch.load(saved, weights_only=True)["model"]
    both = build_model(config_module.replace(tiny_config, **{"model.llm.train": True}))
    with pytest.raises(CheckpointError, match=r"different set of trained parts \(it lacks weights the model trains: \d+ under llm\."):
        checkpoint.load_trainable(both, state, "x.pt")
    connector_only = build_model(tiny_config)
    full = {n: p.detach() for n, p in both.named_parameters() if p.requires_grad}
    with pytest.raises(CheckpointError, match=r"it holds weights the model does not train: \d+ under llm\."):
        checkpoint.load_trainable(connector_only, full, "x.pt")
