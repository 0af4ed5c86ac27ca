"""What training logs: metrics.jsonl fields, WER per validation set, TensorBoard, wandb (offline),
curves.png and the summary table."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import resource
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console

from macasr import config as config_module
from macasr.errors import MacasrError
from macasr.evaluate.wer import score
from macasr.train import tracking
from macasr.train.curves import NO_MATPLOTLIB, draw_curves, plot_curves, series
from macasr.train.run import check_run_dir, train, training_sets
from macasr.train.tracking import (
    LogWindow, MetricsLog, RunSummary, peak_memory, scalars, score_valid_sets, start_tensorboard, start_wandb, summary_table,
    wer_by_dataset,
)
from test_engine import make_trainer, run_config

HAS = {name: importlib.util.find_spec(name) is not None for name in ("tensorboard", "wandb", "matplotlib")}


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def table_rows(console: str) -> dict[str, str]:
    """{what: value} of the two-column summary table a console printed."""
    return {line.split("│")[1].strip(): line.split("│")[2].strip() for line in console.splitlines() if line.count("│") == 3}


@pytest.fixture(scope="module")
def logged_run(tiny_config, corpus, tmp_path_factory):
    """A 3-step run validating on two datasets at steps 2 and 3, with TensorBoard and wandb
    (offline, nothing leaves the machine) on where installed → (run folder, console text)."""
    out = tmp_path_factory.mktemp("logged")
    cfg = run_config(tiny_config, corpus, out, **{
        "data.valid": [str(corpus["valid"]), str(corpus["test"])], "train.max_steps": 3, "train.valid_every": 2,
        "logging.log_every": 1, "logging.tensorboard": HAS["tensorboard"], "logging.wandb": HAS["wandb"],
        "logging.wandb_project": "macasr-test",
    })
    console = Console(file=io.StringIO(), width=200)
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(out / "wandb-default"),
                           "WANDB_CONFIG_DIR": str(out / "wandb-config"), "WANDB_CACHE_DIR": str(out / "wandb-cache"),
                           "WANDB_DATA_DIR": str(out / "wandb-data")}.items():
            mp.setenv(key, value)
        train(cfg, console)
    return cfg.run_dir, console.file.getvalue()


# ----------------------------------------------------------------------------- metrics.jsonl


def test_every_metrics_line_holds_loss_lr_grad_norm_refused_steps_throughput_and_peak_memory(logged_run) -> None:
    run_dir, _ = logged_run
    lines = [r for r in records(run_dir) if "loss" in r]
    assert [r["step"] for r in lines] == [1, 2, 3] and lines[0]["lr"] > lines[-1]["lr"]  # cosine decay
    for r in lines:
        assert r["grad_norm"] > 0 and r["refused_steps"] == 0 and isinstance(r["lr"], float)
        assert r["audio_seconds_per_second"] > 0
        assert r["audio_seconds_per_second_per_process"] == r["audio_seconds_per_second"]  # one process
        assert r["peak_rss_mib"] > 0 and "peak_gpu_allocated_mib" not in r


def test_validation_logs_wer_per_dataset_and_pooled(logged_run) -> None:
    run_dir, console = logged_run
    valid = [r for r in records(run_dir) if "valid_wer" in r]
    assert [r["step"] for r in valid] == [2, 3]
    for r in valid:
        assert set(r["valid_wer_by_dataset"]) == {"valid", "test"}
        low, high = sorted(r["valid_wer_by_dataset"].values())
        assert low <= r["valid_wer"] <= high  # pooled over both sets' words
    assert "(valid " in console and ", test " in console


def test_valid_cuts_carry_their_dataset_name(tiny_config, corpus, tmp_path) -> None:
    cfg = run_config(tiny_config, corpus, tmp_path, **{"data.valid": [str(corpus["valid"]), str(corpus["test"])]})
    _, valid = training_sets(cfg)
    names = [c.custom["dataset"] for c in valid]
    assert names == ["valid"] * names.count("valid") + ["test"] * names.count("test") and names.count("test") > 0


def test_pooled_wer_is_total_errors_over_total_words_not_a_mean_of_rates(tiny_config, corpus, tmp_path) -> None:
    cfg = run_config(tiny_config, corpus, tmp_path, **{"data.valid": [str(corpus["valid"]), str(corpus["test"])]})
    _, valid = training_sets(cfg)
    # A fake decoder: every "valid" clip gets one wrong word per reference, every "test" clip is perfect.
    def evaluate(cuts, name):
        refs = [c.supervisions[0].text for c in cuts]
        hyps = [("zzz " + " ".join(r.split()[1:])) if name == "valid" else r for r in refs]
        return score(name, [c.id for c in cuts], refs, hyps, [c.duration for c in cuts], "basic")
    pooled, by_set = score_valid_sets(valid, evaluate)
    words = {name: s.counts.ref_words for name, s in by_set.items()}
    assert by_set["test"].wer == 0 and by_set["valid"].wer > 0
    assert pooled.wer == pytest.approx(by_set["valid"].counts.word_errors / (words["valid"] + words["test"]))
    assert pooled.utterances == len(valid)


def test_a_dataset_without_a_wer_is_null_not_zero() -> None:
    scored = score("a", ["u1"], ["the cat"], ["the hat"], [1.0], "basic")
    unreadable = score("b", [], [], [], [], "basic", skipped=["b.wav: no such audio file"])
    assert wer_by_dataset({"a": scored, "b": unreadable}) == {"a": 0.5, "b": None}


def test_a_refused_step_is_counted_in_the_next_metrics_line(tiny_config, corpus, tmp_path) -> None:
    cfg = run_config(tiny_config, corpus, tmp_path, **{"train.max_steps": 2, "train.valid_every": 2,
                                                      "logging.log_every": 1, "logging.curves": False})
    trainer = make_trainer(cfg)
    forward, calls = trainer.model.forward, []
    def second_call_nan(batch):
        calls.append(1)
        return forward(batch) * (float("nan") if len(calls) == 2 else 1.0)
    trainer.model.forward = second_call_nan
    trainer.fit()
    lines = [r for r in records(cfg.run_dir) if "loss" in r]
    assert [(r["step"], r["refused_steps"]) for r in lines] == [(1, 0), (2, 1)]
    assert table_rows(trainer.console.file.getvalue())["refused steps"].startswith("1 ")


def test_log_window_averages_over_its_steps_and_leaves_paused_time_out(monkeypatch) -> None:
    clock = iter([0.0, 10.0, 10.0, 110.0, 115.0, 200.0, 200.0])
    monkeypatch.setattr(tracking.time, "perf_counter", lambda: next(clock))
    window = LogWindow()  # started 0.0, window t0 10.0
    window.add(torch.tensor(2.0), 6.0, torch.tensor(1.0))
    window.refuse(2.0)
    with window.paused():  # 10.0 → 110.0: validation, not training
        pass
    window.add(torch.tensor(4.0), 2.0, torch.tensor(3.0))
    line = window.flush(lr=1e-3, device=torch.device("cpu"), world_size=2)  # at 115.0: 5 s of training
    assert (line["loss"], line["grad_norm"], line["refused_steps"]) == (3.0, 2.0, 1)
    assert line["audio_seconds_per_second"] == 10 / 5  # the audio added is all ranks' (summed each step)
    assert line["audio_seconds_per_second_per_process"] == 10 / 5 / 2
    assert (window.steps_taken, window.refused_total, window.audio_total, window.train_seconds) == (2, 1, 10.0, 5.0)
    assert window.steps == 0 and window.last_loss == 3.0


def test_peak_memory_is_the_process_rss_on_cpu_and_the_gpu_peak_on_cuda(monkeypatch) -> None:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert peak_memory(torch.device("cpu"))["peak_rss_mib"] == pytest.approx(rss / 1024, abs=1.0)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 3 * 2**30)
    assert peak_memory(torch.device("cuda", 0)) == {"peak_gpu_allocated_mib": 3072.0}


def test_scalars_flatten_nested_numbers_and_drop_the_rest() -> None:
    assert scalars({"loss": 1.5, "epoch": 0, "ok": True, "wer": {"a": 0.25, "b": None}, "name": "x"}) == {
        "loss": 1.5, "epoch": 0, "wer/a": 0.25}


# ----------------------------------------------------------------------------- TensorBoard


@pytest.mark.skipif(not HAS["tensorboard"], reason="tensorboard is not installed (pip install 'macasr[tensorboard]')")
def test_tensorboard_event_file_holds_the_scalars(logged_run) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _ = logged_run
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss", "lr", "grad_norm", "audio_seconds_per_second", "peak_rss_mib", "valid_wer",
            "valid_wer_by_dataset/valid", "valid_wer_by_dataset/test"} <= tags
    logged = {r["step"]: r["loss"] for r in records(run_dir) if "loss" in r}
    assert {e.step: round(e.value, 5) for e in events.Scalars("loss")} == pytest.approx(logged)
    # --overwrite removes the event files with the rest of the run.
    assert any(p.parent.name == "tensorboard" for p in check_run_dir(run_dir, resume=False, overwrite=True))


def test_tensorboard_without_the_package_is_one_line_naming_the_extra(monkeypatch, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(MacasrError, match=r"^\[logging\] tensorboard = true needs the tensorboard package: "
                                          r"pip install 'macasr\[tensorboard\]'$"):
        start_tensorboard(tmp_path, 0)


@pytest.mark.skipif(not HAS["tensorboard"], reason="tensorboard is not installed")
def test_a_resumed_tensorboard_log_hides_events_past_the_resumed_step(tmp_path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    first = MetricsLog(tmp_path / "metrics.jsonl", tensorboard=start_tensorboard(tmp_path, 0))
    for step in (1, 2, 3, 4):
        first.log(step, loss=float(step))
    first.close()
    resumed = MetricsLog(tmp_path / "metrics.jsonl", fresh=False, tensorboard=start_tensorboard(tmp_path, 2))
    resumed.log(3, loss=30.0)
    resumed.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(1, 1.0), (2, 2.0), (3, 30.0)]


# ----------------------------------------------------------------------------- wandb


def wandb_records(path: Path) -> list:
    """The protobuf records of a .wandb file: a ':W&B' header (7 bytes), then LevelDB-log blocks
    of 32 KiB, each chunk a 7-byte header (CRC32, length, type: 1 full, 2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, chunk, out = 7, 32768, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        chunk += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            out.append(record)
            chunk = b""
    return out


def _items(items) -> dict:
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}


@pytest.mark.skipif(not HAS["wandb"], reason="wandb is not installed (pip install 'macasr[wandb]')")
def test_wandb_offline_run_holds_config_run_folder_metrics_and_summary(logged_run) -> None:
    run_dir, _ = logged_run
    [wandb_file] = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")  # in the run folder, not WANDB_DIR
    history: dict[int, dict] = {}
    config, summary = {}, {}
    for record in wandb_records(wandb_file):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.setdefault(record.history.step.num, {}).update(_items(record.history.item))
        elif kind == "run":
            config |= _items(record.run.config.update)
        elif kind == "config":
            config |= _items(record.config.update)
        elif kind == "summary":
            summary |= _items(record.summary.update)
    assert config["run_dir"] == str(run_dir.resolve()) and config["train"]["name"] == "run"
    logged = {r["step"]: r for r in records(run_dir) if "loss" in r}
    assert {step: h["loss"] for step, h in history.items() if "loss" in h} == {s: r["loss"] for s, r in logged.items()}
    assert {"grad_norm", "audio_seconds_per_second", "peak_rss_mib", "refused_steps"} <= set(history[1])
    assert {"valid_wer", "valid_wer_by_dataset/valid", "valid_wer_by_dataset/test"} <= set(history[2])
    best = min(r["valid_wer"] for r in records(run_dir) if "valid_wer" in r)
    assert summary["best_wer"] == pytest.approx(best, abs=1e-5) and summary["final_loss"] == pytest.approx(logged[3]["loss"])


def test_wandb_without_the_package_is_one_line_naming_the_extra(monkeypatch, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(MacasrError, match=r"^\[logging\] wandb = true needs the wandb package: pip install 'macasr\[wandb\]'$"):
        start_wandb("p", "n", {}, tmp_path)


# ----------------------------------------------------------------------------- end of training


def test_summary_table_names_steps_best_wer_loss_throughput_refused_steps_and_checkpoints(logged_run) -> None:
    run_dir, console = logged_run
    lines = table_rows(console)
    best = min((r["valid_wer"], r["step"]) for r in records(run_dir) if "valid_wer" in r)
    assert lines["steps"] == "3"
    assert lines["best valid WER"] == f"{100 * best[0]:.2f} % at step {best[1]}"
    assert lines["final loss"] == f"{[r for r in records(run_dir) if 'loss' in r][-1]['loss']:.4f}"
    assert lines["throughput"].endswith("audio s/s") and lines["refused steps"].startswith("0 ")
    assert lines["checkpoints"] == "best.pt, last.pt"


def test_summary_of_a_resumed_run_says_where_it_resumed() -> None:
    summary = RunSummary(step=1200, first_step=400, wall_seconds=3725.0, train_seconds=3000.0, audio_seconds=90_000.0,
                         best_wer=None, best_step=None, final_loss=None, refused_steps=2, checkpoints=())
    console = Console(file=io.StringIO(), width=200)
    console.print(summary_table(summary))
    rows = table_rows(console.file.getvalue())
    assert rows["steps"] == "1,200 (resumed at step 400)" and rows["time"].startswith("1h 02m 05s (50m 00s training")
    assert (rows["best valid WER"], rows["final loss"], rows["throughput"]) == ("n/a", "n/a", "30.0 audio s/s")
    assert rows["refused steps"].startswith("2 ") and rows["checkpoints"] == "none"


@pytest.mark.skipif(not HAS["matplotlib"], reason="matplotlib is not installed (pip install 'macasr[plots]')")
def test_curves_png_is_drawn_at_the_end_of_training(logged_run) -> None:
    run_dir, console = logged_run
    assert (run_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"curves: {run_dir / 'curves.png'}" in " ".join(console.split())


@pytest.mark.skipif(not HAS["matplotlib"], reason="matplotlib is not installed")
def test_curves_plot_loss_and_wer_per_dataset_from_metrics_jsonl(tmp_path) -> None:
    lines = [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.0},
             {"step": 2, "valid_wer": 0.5, "valid_wer_by_dataset": {"a": 0.4, "b": 0.6}},
             {"step": 2, "loss": 2.5},  # the step again, from a resumed run: the last value counts
             {"step": 4, "loss": 1.0}, {"step": 4, "valid_wer": 0.3, "valid_wer_by_dataset": {"a": 0.2, "b": None}}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"step": 5, "lo')
    figure = plot_curves(tmp_path / "metrics.jsonl", tmp_path / "curves.png")
    loss_ax, wer_ax = figure.axes
    assert loss_ax.lines[0].get_xydata().tolist() == [[1, 3.0], [2, 2.5], [4, 1.0]]
    drawn = {line.get_label(): line.get_xydata().tolist() for line in wer_ax.lines}
    assert drawn == {"a": [[2, 40.0], [4, 20.0]], "b": [[2, 60.0]], "all valid sets": [[2, 50.0], [4, 30.0]]}
    assert series(lines, "valid_wer_by_dataset", "b") == ([2], [0.6])
    assert (tmp_path / "curves.png").stat().st_size > 0 and not list(tmp_path.glob(".*tmp"))


def test_without_matplotlib_curves_are_skipped_with_a_note(monkeypatch, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    assert draw_curves(tmp_path) == NO_MATPLOTLIB == "curves.png not drawn: it needs matplotlib (pip install 'macasr[plots]')"
    assert not (tmp_path / "curves.png").exists()


def test_curves_false_draws_nothing(tiny_config, corpus, tmp_path) -> None:
    cfg = run_config(tiny_config, corpus, tmp_path, **{"logging.curves": False})
    train(cfg, Console(file=io.StringIO()))
    assert (cfg.run_dir / "metrics.jsonl").is_file() and not (cfg.run_dir / "curves.png").exists()


def test_logging_keys_default_to_tensorboard_off_and_curves_on() -> None:
    defaults = config_module.Config().logging
    assert (defaults.tensorboard, defaults.curves) == (False, True)
    assert os.environ.get("WANDB_MODE") == "offline"  # tests/conftest.py: nothing reaches wandb's servers
