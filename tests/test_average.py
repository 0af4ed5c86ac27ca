"""`macasr average`: the element-wise mean of checkpoints of one model, written as a checkpoint that evaluates."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from macasr import config as config_module, testing
from macasr.cli import app
from macasr.errors import CheckpointError, MacasrError
from macasr.model.build import build_model
from macasr.train import checkpoint
from macasr.train.average import average_checkpoints, average_state, last_checkpoints

runner = CliRunner()


def save(cfg, path: Path, step: int, seed: int) -> Path:
    """A checkpoint of `cfg`'s model with weights perturbed by `seed`."""
    torch.manual_seed(seed)
    model = build_model(cfg)
    testing.perturb_trainable(model)
    return checkpoint.save_checkpoint(path, checkpoint.model_payload(model, cfg, step=step))


def stored(path: Path) -> dict:
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def pair(tiny_config, tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("pair")
    return save(tiny_config, folder / "a.pt", 10, seed=1), save(tiny_config, folder / "b.pt", 20, seed=2)


def test_the_average_of_two_checkpoints_is_their_mean(pair, tmp_path) -> None:
    a, b = pair
    out = average_checkpoints([a, b], tmp_path / "avg.pt")
    avg, first, second = stored(out), stored(a), stored(b)
    assert avg["model"].keys() == first["model"].keys()
    for name, tensor in avg["model"].items():
        assert not torch.equal(first["model"][name], second["model"][name])  # the two differ, so the mean means something
        torch.testing.assert_close(tensor, (first["model"][name] + second["model"][name]) / 2, msg=name)
    assert avg["config"] == first["config"] and avg["step"] == 20
    assert avg["metrics"] == {"averaged": f"2 checkpoints: {a} (step 10), {b} (step 20)"}
    assert "optimizer" not in avg  # weights only, like a best.pt


def test_integer_and_bool_tensors_are_taken_from_the_first() -> None:
    states = [{"w": torch.tensor([1.0, 3.0]), "n": torch.tensor([1, 2]), "m": torch.tensor([True, False])},
              {"w": torch.tensor([3.0, 5.0]), "n": torch.tensor([4, 8]), "m": torch.tensor([False, False])}]
    avg = average_state(states)
    torch.testing.assert_close(avg["w"], torch.tensor([2.0, 4.0]))
    assert torch.equal(avg["n"], states[0]["n"]) and torch.equal(avg["m"], states[0]["m"])
    assert avg["n"].dtype == torch.int64


def test_bf16_weights_are_averaged_in_float64_and_kept_bf16() -> None:
    states = [{"w": torch.full((3,), v, dtype=torch.bfloat16)} for v in (1.0, 2.0, 4.0)]
    avg = average_state(states)["w"]
    assert avg.dtype == torch.bfloat16
    torch.testing.assert_close(avg, torch.full((3,), 7 / 3, dtype=torch.bfloat16))


def test_the_average_evaluates_like_any_checkpoint(pair, corpus, tmp_path) -> None:
    out = average_checkpoints(list(pair), tmp_path / "avg.pt")
    restored = checkpoint.restore_model(out, "cpu")
    for name, tensor in stored(out)["model"].items():
        torch.testing.assert_close(dict(restored.model.named_parameters())[name].detach(), tensor, msg=name)
    report = tmp_path / "report.json"
    result = runner.invoke(app, ["eval", "--ckpt", str(out), "--manifest", str(corpus["test"]), "--report", str(report)])
    assert result.exit_code == 0, result.output
    assert report.is_file()


def test_the_cli_averages_and_refuses_in_one_line(pair, tiny_config, tmp_path) -> None:
    a, b = pair
    out = tmp_path / "avg.pt"
    result = runner.invoke(app, ["average", str(a), str(b), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"averaged 2 checkpoints ({a}, {b}) into {out}" in result.output
    result = runner.invoke(app, ["average", str(a), str(b), "--out", str(out)])
    assert result.exit_code == 1 and result.stderr.strip() == f"error: --out {out}: already exists; replace it with --force"
    assert runner.invoke(app, ["average", str(a), str(b), "--out", str(out), "--force"]).exit_code == 0
    wider = save(config_module.replace(tiny_config, **{"model.connector.hidden_dim": 32}), tmp_path / "c.pt", 30, seed=3)
    result = runner.invoke(app, ["average", str(a), str(wider), "--out", str(tmp_path / "x.pt")])
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.strip() == (f"error: {wider}: cannot be averaged with {a}: its config differs in "
                                      "model.connector.hidden_dim (64 there, 32 here)")
    assert not (tmp_path / "x.pt").exists()


def test_mismatched_weights_are_refused_naming_the_first(pair, tmp_path) -> None:
    a, _ = pair
    data = checkpoint.load_checkpoint(a)
    name = next(iter(data["model"]))
    reshaped = {**data["model"], name: data["model"][name].reshape(-1)}
    odd = checkpoint.save_checkpoint(tmp_path / "odd.pt", {**data, "model": reshaped})
    with pytest.raises(CheckpointError, match=rf"^{odd}: cannot be averaged with {a}: weight {name} has shape \["):
        average_checkpoints([a, odd], tmp_path / "x.pt")
    fewer = checkpoint.save_checkpoint(tmp_path / "fewer.pt", {**data, "model": {k: v for k, v in data["model"].items() if k != name}})
    with pytest.raises(CheckpointError, match=rf"^{fewer}: cannot be averaged with {a}: it lacks weight {name}, which"):
        average_checkpoints([a, fewer], tmp_path / "x.pt")


def test_one_checkpoint_a_repeated_one_or_an_input_as_output_are_refused(pair, tmp_path) -> None:
    a, b = pair
    with pytest.raises(MacasrError, match="at least two checkpoints, got 1"):
        average_checkpoints([a], tmp_path / "x.pt")
    with pytest.raises(MacasrError, match="given twice"):
        average_checkpoints([a, b, a], tmp_path / "x.pt")
    with pytest.raises(MacasrError, match="is one of the checkpoints averaged"):
        average_checkpoints([a, b], b, force=True)


@pytest.fixture
def run_dir(tiny_config, tmp_path) -> Path:
    """A run that kept best.pt (step 30), best-step20.pt, best-step10.pt and last.pt (step 30, the best's step)."""
    run = tmp_path / "run"
    for name, step in (("best.pt", 30), ("best-step20.pt", 20), ("best-step10.pt", 10), ("last.pt", 30)):
        save(tiny_config, run / name, step, seed=step)
    (run / "best-stepX.pt").write_bytes(b"not one of the run's")
    return run


def test_last_n_takes_the_newest_distinct_steps(run_dir) -> None:
    assert last_checkpoints(run_dir, 2) == [run_dir / "best.pt", run_dir / "best-step20.pt"]
    assert last_checkpoints(run_dir, 3) == [run_dir / "best.pt", run_dir / "best-step20.pt", run_dir / "best-step10.pt"]
    with pytest.raises(CheckpointError, match=r"--last 4 needs 4 checkpoints of different steps, the run keeps 3 "
                                              r"\(best-step10\.pt \(step 10\), best-step20\.pt \(step 20\), best\.pt \(step 30\)\)"):
        last_checkpoints(run_dir, 4)


def test_last_n_through_the_cli(run_dir, tmp_path) -> None:
    out = tmp_path / "avg.pt"
    result = runner.invoke(app, ["average", "--last", "2", str(run_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert stored(out)["metrics"]["averaged"] == f"2 checkpoints: {run_dir / 'best.pt'} (step 30), {run_dir / 'best-step20.pt'} (step 20)"
    result = runner.invoke(app, ["average", "--last", "2", str(run_dir), str(run_dir), "--out", str(out), "--force"])
    assert result.exit_code == 1 and "takes one run folder, got 2 paths" in result.stderr


@pytest.mark.parametrize("n", ["0", "1"])
def test_last_below_two_is_refused_with_one_message(run_dir, tmp_path, n) -> None:
    result = runner.invoke(app, ["average", "--last", n, str(run_dir), "--out", str(tmp_path / "avg.pt")])
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: --last must be at least 2: averaging needs two checkpoints, got {n}"


def test_the_last_help_names_the_step_with_its_own_letter() -> None:
    result = runner.invoke(app, ["average", "--help"], env={"COLUMNS": "300"})
    assert "best-step<STEP>.pt" in result.output and "best-step<N>.pt" not in result.output


def test_checkpoints_whose_model_folders_moved_are_averaged_with_a_note(pair, tiny_config, tmp_path) -> None:
    """A folder is where a model's weights were read from: the average keeps the first's and says so."""
    a, _ = pair
    data = checkpoint.load_checkpoint(a)
    config = {**data["config"], "model": {**data["config"]["model"], "llm": {**data["config"]["model"]["llm"], "path": "/moved/qwen3"}}}
    moved = checkpoint.save_checkpoint(tmp_path / "moved.pt", {**data, "config": config,
                                                                "model": {k: v + 1 for k, v in data["model"].items()}})
    out = tmp_path / "avg.pt"
    result = runner.invoke(app, ["average", str(a), str(moved), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert " ".join(result.stderr.split()) == (
        f"note: {moved}: names other model folders than the first checkpoint (model.llm.path: "
        f"'{tiny_config.model.llm.path}' in the first, '/moved/qwen3' there); the average keeps the first's")
    assert stored(out)["config"] == data["config"]


def test_another_connector_is_named_before_the_keys_it_lacks(pair, tiny_config, tmp_path) -> None:
    """mlp against linear differs in `name`, which explains `hidden_dim` and `dropout`: say `name`."""
    a, _ = pair
    linear = save(config_module.replace(tiny_config, **{"model.connector.name": "linear"}), tmp_path / "linear.pt", 5, seed=3)
    with pytest.raises(CheckpointError, match=rf"^{linear}: cannot be averaged with {a}: its config differs in model\.connector\.name "):
        average_checkpoints([a, linear], tmp_path / "x.pt")
