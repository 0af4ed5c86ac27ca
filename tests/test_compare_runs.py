"""`macasr compare RUN_DIR...`: training runs side by side from their run folders (no model)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from macasr import config
from macasr.cli import app
from macasr.errors import MacasrError
from macasr.evaluate.report import write_report
from macasr.evaluate.wer import score
from macasr.train.compare_runs import ABSENT, config_differences, load_run, load_runs, plot_runs, scored_here, shorten

runner = CliRunner()
WIDE = {"COLUMNS": "250"}
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def _train_line(step: int, loss: float, rate: float) -> dict:
    """A training line as LogWindow.flush and the engine write it."""
    return {"step": step, "time": 1795972283.0 + step, "loss": loss, "lr": 1e-4, "grad_norm": 1.0, "refused_steps": 0,
            "audio_seconds_per_second": rate, "audio_seconds_per_second_per_process": rate, "peak_rss_mib": 700.0, "epoch": 0}


def _valid_line(step: int, wer: float, best: float) -> dict:
    return {"step": step, "time": 1795972283.5 + step, "valid_wer": wer, "valid_cer": wer / 2, "best_wer": best,
            "valid_wer_by_dataset": {"valid": wer}}


def _run(root: Path, name: str, lines: list[dict], tail: str = "", **changes) -> Path:
    """A run folder as `macasr train` leaves it: config.toml (config.dump) and metrics.jsonl."""
    run_dir = root / name
    cfg = config.replace(config.Config(), **{"train.name": name, **changes})
    config.dump(cfg, run_dir / "config.toml")
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines) + tail)
    return run_dir


def _report(path: Path, hyps: dict[str, str], normalizer: str = "basic", checkpoint: str | None = None) -> Path:
    """An eval report with one dataset per entry, the reference "a b c d" against its hypothesis;
    `checkpoint` as `macasr eval` records it (none recorded by default)."""
    scores = [score(name, ["u0"], ["a b c d"], [hyp], [1.0], normalizer) for name, hyp in hyps.items()]
    return write_report(path, scores, normalizer, {"checkpoint": checkpoint} if checkpoint else None)[0]


def _row(text: str, name: str) -> list[str]:
    """The cells after the first of the table row whose first cell is `name`."""
    for line in text.splitlines():
        cells = [c.strip() for c in re.split("[│┃]", line.strip("│┃ "))]
        if cells[0] == name:
            return cells[1:]
    raise AssertionError(f"no row {name!r} in:\n{text}")


@pytest.fixture
def two_runs(tmp_path: Path) -> tuple[Path, Path]:
    a = _run(tmp_path, "a", [_train_line(50, 3.0, 100.0), _valid_line(50, 0.40, 0.40), _train_line(100, 2.0, 300.0),
                             _valid_line(100, 0.20, 0.20), _train_line(150, 1.5, 200.0), _valid_line(150, 0.25, 0.20)],
             **{"train.lr": 3e-4})
    qformer = config.CONNECTORS.config_type("qformer")()
    b = _run(tmp_path, "b", [_train_line(50, 2.5, 50.0), _valid_line(50, 0.30, 0.30), _train_line(100, 1.0, 70.0),
                             _valid_line(100, 0.30, 0.30)], **{"model.connector": qformer})
    _report(a / "report.json", {"test": "a b c d", "other": "a b x d"})  # 0 % and 25 %
    _report(b / "report.json", {"test": "a b"})  # 50 %
    _report(b / "beam.json", {"test": "a b c"})  # 25 %
    return a, b


def test_only_the_keys_that_differ_are_shown(two_runs) -> None:
    runs = load_runs(list(two_runs))
    diff = config_differences(runs)
    a_keys, b_keys = set(runs[0].config), set(runs[1].config)
    assert "train.lr" in diff and diff["train.lr"] == [3e-4, 1e-4]
    assert diff["train.name"] == ["a", "b"] and diff["model.connector.name"] == ["mlp", "qformer"]
    only_b = b_keys - a_keys  # the Q-Former's own keys: absent from the MLP run
    assert only_b and all(diff[key][0] is ABSENT and shorten(diff[key][0]) == "-" for key in only_b)
    same = {key for key in a_keys & b_keys if runs[0].config[key] == runs[1].config[key]}
    assert "train.max_steps" in same and not same & set(diff)
    assert set(diff) == (a_keys ^ b_keys) | (a_keys & b_keys) - same


def test_long_values_lose_their_middle() -> None:
    value = "/data/models/" + "x" * 60 + "/qwen3-1.7b"
    short = shorten(value)
    assert len(short) == 40 and short.startswith("/data/models/") and short.endswith("/qwen3-1.7b") and "…" in short
    assert shorten(["q_proj", "v_proj"]) == '["q_proj", "v_proj"]' and shorten(True) == "true"


def test_best_wer_step_and_throughput(two_runs) -> None:
    a, b = load_runs(list(two_runs))
    assert a.best == (0.20, 100) and a.steps == 150 and a.final_loss == 1.5
    assert a.throughput == pytest.approx(200.0)  # mean of 100, 300, 200
    assert b.best == (0.30, 50)  # a tie keeps the earliest step (best.pt is not replaced by an equal WER)
    assert b.throughput == pytest.approx(60.0)


def test_cli_tables_show_differences_results_and_report_wers(two_runs) -> None:
    a, b = two_runs
    result = runner.invoke(app, ["compare", str(a), str(b)], env=WIDE)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert _row(out, "train.lr") == ["0.0003", "0.0001"] and _row(out, "model.connector.name") == ["mlp", "qformer"]
    assert "train.max_steps" not in out  # the same in both
    assert _row(out, "steps") == ["150 of 20,000", "100 of 20,000"]
    assert _row(out, "best valid WER %") == ["20.00", "30.00"] and _row(out, "best at step") == ["100", "50"]
    assert _row(out, "audio s/s") == ["200.0", "60.0"] and _row(out, "final loss") == ["1.5000", "1.0000"]
    assert _row(out, "test WER % test") == ["0.00", "50.00"]
    assert _row(out, "test WER % other") == ["25.00", "-"]
    assert _row(out, "test WER % test (beam)") == ["-", "25.00"]
    assert result.stderr == ""


def test_one_run_prints_its_summary_with_a_note(two_runs) -> None:
    result = runner.invoke(app, ["compare", str(two_runs[0])], env=WIDE)
    assert result.exit_code == 0, result.output
    assert "Config differences" not in result.stdout and _row(result.stdout, "best valid WER %") == ["20.00"]
    assert "one run: its summary alone" in result.stderr


def test_notes_say_what_is_missing_or_not_comparable(tmp_path: Path) -> None:
    a = _run(tmp_path, "a", [_train_line(10, 1.0, 10.0)])
    b = _run(tmp_path, "b", [_train_line(10, 1.0, 10.0), _valid_line(10, 0.5, 0.5)])
    _report(a / "report.json", {"test": "a b"}, normalizer="basic")
    _report(b / "report.json", {"test": "a b"}, normalizer="whisper")
    result = runner.invoke(app, ["compare", str(a), str(b)], env=WIDE)
    assert result.exit_code == 0, result.output
    notes = " ".join(result.stderr.split())
    assert f"a: no validation WER in {a / 'metrics.jsonl'}" in notes
    assert "test WER test: normalizers differ (basic: a; whisper: b)" in notes
    assert _row(result.stdout, "best valid WER %") == ["n/a", "50.00"]
    (a / "report.json").unlink()
    notes = " ".join(runner.invoke(app, ["compare", str(a), str(b)], env=WIDE).stderr.split())
    # the hint runs as printed: eval needs the checkpoint to score
    assert f"a: no eval report (*.json) in {a}; `macasr eval --ckpt {a / 'best.pt'} --report {a / 'report.json'}` writes one" in notes


def test_runs_with_the_same_folder_name_are_labelled_by_path(tmp_path: Path) -> None:
    one = _run(tmp_path / "x", "run", [_train_line(1, 1.0, 1.0)])
    two = _run(tmp_path / "y", "run", [_train_line(1, 1.0, 1.0)])
    assert [r.label for r in load_runs([one, two])] == [str(one), str(two)]


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="matplotlib is not installed (pip install 'macasr[plots]')")
def test_plot_overlays_loss_and_wer_of_every_run(two_runs, tmp_path: Path) -> None:
    out = tmp_path / "runs.png"
    result = runner.invoke(app, ["compare", *map(str, two_runs), "--plot", str(out)], env=WIDE)
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    figure = plot_runs(load_runs(list(two_runs)), tmp_path / "again.png")
    loss_ax, wer_ax = figure.axes
    assert {line.get_label(): line.get_xydata().tolist() for line in loss_ax.lines} == {
        "a": [[50, 3.0], [100, 2.0], [150, 1.5]], "b": [[50, 2.5], [100, 1.0]]}
    assert {line.get_label(): line.get_xydata().tolist() for line in wer_ax.lines} == {
        "a": [[50, 40.0], [100, 20.0], [150, 25.0]], "b": [[50, 30.0], [100, 30.0]]}


def test_plot_without_matplotlib_is_one_line_before_any_work(two_runs, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)
    result = runner.invoke(app, ["compare", *map(str, two_runs), "--plot", str(tmp_path / "runs.png")], env=WIDE)
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.strip() == "error: --plot needs matplotlib: pip install 'macasr[plots]'"


def _error(*words: str) -> str:
    result = runner.invoke(app, ["compare", *words], env=WIDE)
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1, result.output
    return " ".join(result.stderr.split())


def test_bad_inputs_are_one_line_each(two_runs, tmp_path: Path) -> None:
    a, b = map(str, two_runs)
    assert _error(a, str(tmp_path / "nope")) == f"error: run {tmp_path / 'nope'}: no such folder; give run folders (runs/NAME) that `macasr train` wrote"
    not_run = tmp_path / "empty"
    not_run.mkdir()
    assert f"run {not_run}: not a run folder (no config.toml;" in _error(a, str(not_run))
    (not_run / "config.toml").write_text("")
    assert f"run {not_run}: not a run folder (no metrics.jsonl;" in _error(a, str(not_run))
    assert f"run {a} is given twice" in _error(a, b, a)
    assert "--plot" in _error(a, b, "--plot", str(tmp_path))  # a folder, or matplotlib missing


def test_a_garbled_metrics_line_is_named_by_file_and_line(tmp_path: Path) -> None:
    lines = [_train_line(1, 1.0, 1.0), _train_line(2, 1.0, 1.0)]
    cut = _run(tmp_path, "cut", lines, tail='{"step": 3, "lo')  # cut short by a crash: left out
    assert load_run(cut).steps == 2
    bad = _run(tmp_path, "bad", lines)
    path = bad / "metrics.jsonl"
    path.write_text(path.read_text().replace("\n", "\nnot json\n", 1))
    with pytest.raises(MacasrError, match=re.escape(f"{path}:2: not a metrics line")):
        load_run(bad)
    assert f"{path}:2: not a metrics line" in _error(str(cut), str(bad))


def test_a_bad_config_or_report_in_a_run_is_named(two_runs) -> None:
    a, b = two_runs
    (b / "config.toml").write_text("[train\n")
    assert _error(str(a), str(b)).startswith(f"error: {b / 'config.toml'}: not valid TOML (")
    (a / "notes.json").write_text('{"x": 1}')
    assert _error(str(a)).startswith(f"error: report {a / 'notes.json'}: not a `macasr eval --report` file")


def test_each_compare_names_the_other_in_its_help() -> None:
    """`macasr compare` (runs) and `macasr eval --compare` (two reports) point at each other."""
    compare_help = " ".join(runner.invoke(app, ["compare", "--help"], env=WIDE).output.split())
    eval_help = " ".join(runner.invoke(app, ["eval", "--help"], env=WIDE).output.split())
    assert "macasr eval --compare A.json B.json" in compare_help
    assert "Whole training runs: macasr compare RUN_DIR" in eval_help


def test_a_report_of_another_runs_checkpoint_is_left_out_with_a_note(two_runs) -> None:
    a, b = two_runs
    _report(b / "copied.json", {"test": "a"}, checkpoint=str(a / "best.pt"))  # a's report copied into b
    _report(b / "avg.json", {"test": "a b c d"}, checkpoint=str(b / "avg.pt"))  # b's own, absolute
    _report(b / "rel.json", {"test": "a b c d"}, checkpoint=f"{b.parent.name}/b/last.pt")  # eval ran from another folder
    result = runner.invoke(app, ["compare", str(a), str(b)], env=WIDE)
    assert result.exit_code == 0, result.output
    assert "test WER % test (copied)" not in result.stdout
    assert _row(result.stdout, "test WER % test (avg)") == ["-", "0.00"] and _row(result.stdout, "test WER % test (rel)") == ["-", "0.00"]
    notes = " ".join(result.stderr.split())
    assert f"b: {b / 'copied.json'} left out: it scored {a / 'best.pt'}, not a checkpoint of {b}" in notes
    assert len(result.stderr.strip().splitlines()) == 1
    for name in ("report.json", "beam.json", "avg.json", "rel.json"):
        (b / name).unlink()
    result = runner.invoke(app, ["compare", str(a), str(b)], env=WIDE)
    notes = " ".join(result.stderr.split())
    assert "b: no eval report" not in notes and f"b: {b / 'copied.json'} left out" in notes  # the note says why it has none


def test_scored_here_resolves_paths(tmp_path: Path, monkeypatch) -> None:
    run = tmp_path / "runs" / "b"
    run.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert scored_here("runs/b/best.pt", run) and scored_here("./runs/b/../b/last.pt", run)
    assert scored_here(str(run / "export"), run)  # a bundle exported into the run folder
    assert scored_here("elsewhere/runs/b/best.pt", tmp_path / "elsewhere" / "runs" / "b")  # eval ran from another folder
    assert not scored_here("runs/demo/best.pt", run) and not scored_here(str(tmp_path / "runs" / "bb" / "best.pt"), run)
    assert not scored_here("runs/b/../a/best.pt", run) and not scored_here(str(tmp_path / "best.pt"), run)


def test_a_table_or_key_a_config_lacks_counts_as_its_default(two_runs) -> None:
    a, b = two_runs
    text = (a / "config.toml").read_text()
    assert "[plugins]" in text and "\nlr = " in text
    kept = [line for line in text.splitlines() if line not in ("[plugins]", "modules = []") and not line.startswith("lr = ")]
    (a / "config.toml").write_text("\n".join(kept))  # a config from before [plugins] existed, train.lr (3e-4) left out
    diff = config_differences(load_runs([a, b]))
    assert "plugins.modules" not in diff and "train.lr" not in diff  # both at their defaults now
    assert "model.connector.num_queries" in diff and diff["model.connector.num_queries"][0] is ABSENT  # an MLP has none


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="matplotlib is not installed (pip install 'macasr[plots]')")
def test_plot_takes_png_pdf_svg_and_refuses_other_names_before_any_work(two_runs, tmp_path: Path) -> None:
    a, b = map(str, two_runs)
    assert _error(a, b, "--plot", str(tmp_path / "x.txt")) == (
        f"error: --plot {tmp_path / 'x.txt'}: unknown image type '.txt'; give a file name ending in .png, .pdf, .svg")
    assert _error(a, b, "--plot", str(tmp_path / "nodir" / "x.png")) == (
        f"error: --plot {tmp_path / 'nodir' / 'x.png'}: no such folder {tmp_path / 'nodir'}; create it first or give another path")
    assert not (tmp_path / "nodir").exists() and not (tmp_path / "x.txt").exists()
    for name, magic in (("runs.pdf", b"%PDF"), ("runs.svg", b"<?xml")):
        result = runner.invoke(app, ["compare", a, b, "--plot", str(tmp_path / name)], env=WIDE)
        assert result.exit_code == 0, result.output
        assert (tmp_path / name).read_bytes().startswith(magic)
