"""Faults around a training run: stop signals, out-of-memory batches, a run folder in use, failed
checkpoint writes."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from macasr import config as config_module
from macasr.cli import app
from macasr.errors import CheckpointError, MacasrError
from macasr.model.build import build_model
from macasr.model.speech_llm import SpeechLLM
from macasr.train import checkpoint
from macasr.train.engine import Trainer
from macasr.train.faults import LOCK_FILE, RunLock
from macasr.train.run import train, training_sets

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def run_config(tiny_config, corpus, out: Path, name: str = "run", **changes):
    return config_module.replace(tiny_config, **{
        "data.train": [str(corpus["train"])], "train.output_dir": str(out), "train.name": name,
        "train.warmup_steps": 0, "train.max_steps": 1, "train.valid_every": 1, "logging.log_every": 1, **changes,
    })


def make_trainer(cfg) -> Trainer:
    return Trainer(cfg, build_model(cfg), *training_sets(cfg), torch.device("cpu"), "fp32", Console(file=io.StringIO(), width=400))


def printed(trainer: Trainer) -> str:
    return " ".join(trainer.console.file.getvalue().split())


def squeezed(text: str) -> str:
    """`text` without whitespace: a console may wrap a long path anywhere."""
    return "".join(text.split())


def steps_logged(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines() if "loss" in line]


# ----------------------------------------------------------------------------- stop signals


def test_sigterm_to_a_training_process_group_saves_last_pt_and_exits_0(tiny_config, corpus, tmp_path: Path) -> None:
    """A real `macasr train` in its own process group (as a cluster or a terminal signals it,
    DataLoader worker included); then --resume continues from the step it saved."""
    cfg = run_config(tiny_config, corpus, tmp_path, **{"train.max_steps": 10_000, "train.valid_every": 10_000,
                                                       "train.save_every": 0, "data.num_workers": 1})
    toml = config_module.dump(cfg, tmp_path / "c.toml")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "COLUMNS": "300"}
    proc = subprocess.Popen([sys.executable, "-m", "macasr", "train", str(toml)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    metrics = cfg.run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 180
    while proc.poll() is None and time.monotonic() < deadline and not (metrics.is_file() and len(steps_logged(cfg.run_dir)) >= 2):
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[0]
    assert (cfg.run_dir / LOCK_FILE).is_file()
    os.killpg(proc.pid, signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output
    saved = torch.load(cfg.run_dir / "last.pt", weights_only=True)
    logged = steps_logged(cfg.run_dir)
    assert saved["step"] == logged[-1] >= 2 and logged == list(range(1, logged[-1] + 1))
    assert squeezed(f"stopped by SIGTERM at step {saved['step']}; continue with: macasr train {toml} --resume") in squeezed(output)
    assert not (cfg.run_dir / LOCK_FILE).exists()

    more = config_module.replace(cfg, **{"train.max_steps": saved["step"] + 1})
    result = runner.invoke(app, ["train", str(config_module.dump(more, toml)), "--resume"])
    assert result.exit_code == 0, result.output
    assert squeezed(f"resumed from {cfg.run_dir / 'last.pt'} at step {saved['step']}") in squeezed(result.output)
    assert torch.load(cfg.run_dir / "last.pt", weights_only=True)["step"] == saved["step"] + 1
    assert steps_logged(cfg.run_dir) == list(range(1, saved["step"] + 2))


def test_ctrl_c_finishes_the_step_saves_and_exits_130(tiny_config, corpus, tmp_path, monkeypatch) -> None:
    cfg = run_config(tiny_config, corpus, tmp_path, **{"train.max_steps": 50, "train.valid_every": 50})
    forward, calls = SpeechLLM.forward, []

    def interrupted(self, batch):
        calls.append(1)
        if len(calls) == 2:  # during step 2
            os.kill(os.getpid(), signal.SIGINT)
        return forward(self, batch)

    monkeypatch.setattr(SpeechLLM, "forward", interrupted)
    handler = signal.getsignal(signal.SIGINT)
    result = runner.invoke(app, ["train", str(config_module.dump(cfg, tmp_path / "c.toml"))])
    assert result.exit_code == 130, result.output
    out = " ".join(result.output.split())
    assert "SIGINT: stopping after this step, then writing last.pt; Ctrl-C again to stop at once" in out
    assert "stopped by SIGINT at step 2; continue with" in out
    assert torch.load(cfg.run_dir / "last.pt", weights_only=True)["step"] == 2 and steps_logged(cfg.run_dir) == [1, 2]
    assert signal.getsignal(signal.SIGINT) is handler  # the handlers in place before the run are back


# ----------------------------------------------------------------------------- out of memory


def fail_on_call(trainer: Trainer, number: int, seen: list) -> None:
    forward = trainer.model.forward

    def forward_or_oom(batch):
        seen.append(batch)
        if len(seen) == number:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return forward(batch)

    trainer.model.forward = forward_or_oom


def test_an_out_of_memory_batch_is_skipped_and_logged_with_its_seconds(tiny_config, corpus, tmp_path) -> None:
    trainer = make_trainer(run_config(tiny_config, corpus, tmp_path, **{"train.max_steps": 3, "train.valid_every": 3}))
    seen: list = []
    fail_on_call(trainer, 2, seen)
    assert trainer.fit().steps == 3
    batch = seen[1]
    seconds = sum(batch.durations)
    assert (f"step 2: out of memory on a batch of {len(batch)} clips, {seconds:.1f} s of audio in total "
            f"({', '.join(batch.ids)}); step skipped") in printed(trainer)
    records = [json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["out_of_memory_seconds"] for r in records if "out_of_memory_seconds" in r] == [round(seconds, 2)]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3]
    assert all(p.grad is None for p in trainer.model.parameters())


def test_on_oom_stop_ends_the_run_keeping_last_pt(tiny_config, corpus, tmp_path) -> None:
    trainer = make_trainer(run_config(tiny_config, corpus, tmp_path, **{"train.max_steps": 3, "train.valid_every": 3,
                                                                         "train.on_oom": "stop", "train.save_every": 1}))
    fail_on_call(trainer, 2, [])
    with pytest.raises(MacasrError) as error:
        trainer.fit()
    message = str(error.value)
    assert "\n" not in message and message.startswith("step 2: out of memory on a batch of ")
    assert f"stopped ([train] on_oom = \"stop\"); training stopped at step 1, resumable from {trainer.run_dir / 'last.pt'} (step 1)" in message
    assert torch.load(trainer.run_dir / "last.pt", weights_only=True)["step"] == 1


def test_max_bad_steps_out_of_memory_batches_in_a_row_stop_the_run(tiny_config, corpus, tmp_path) -> None:
    trainer = make_trainer(run_config(tiny_config, corpus, tmp_path, **{"train.max_steps": 3, "train.max_bad_steps": 2}))
    trainer.model.forward = lambda batch: (_ for _ in ()).throw(torch.OutOfMemoryError("out of memory"))
    with pytest.raises(MacasrError, match=r"step 1: out of memory .*; step skipped; stopped after 2 refused steps in a row "
                                          r"\(\[train\] max_bad_steps\), no checkpoint was written yet"):
        trainer.fit()


# ----------------------------------------------------------------------------- run folder lock


def test_a_second_run_in_a_folder_in_use_is_refused(tiny_config, corpus, tmp_path) -> None:
    cfg = run_config(tiny_config, corpus, tmp_path)
    cfg.run_dir.mkdir(parents=True)
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as other:
        (cfg.run_dir / LOCK_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": other.pid}))
        for resume in (False, True):
            with pytest.raises(MacasrError) as error:
                if resume:
                    checkpoint.save_checkpoint(cfg.run_dir / "last.pt", {"model": {}})
                train(cfg, Console(file=io.StringIO()), resume=resume)
            assert str(error.value) == (f"{cfg.run_dir} is in use by another training run (pid {other.pid} on host "
                                        f"{socket.gethostname()}, see {cfg.run_dir / LOCK_FILE}); wait for it to end, "
                                        "or give this run another [train] name")
        other.kill()
    assert json.loads((cfg.run_dir / LOCK_FILE).read_text())["pid"] == other.pid  # never taken from a live run


def test_a_lock_left_by_a_killed_run_is_taken_over_and_released(tiny_config, corpus, tmp_path) -> None:
    cfg = run_config(tiny_config, corpus, tmp_path)
    cfg.run_dir.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (cfg.run_dir / LOCK_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout)}))
    out = io.StringIO()
    assert train(cfg, Console(file=out, width=400)).steps == 1
    assert f"took over the lock of pid {int(dead.stdout)} on host {socket.gethostname()} (its process is gone)" in out.getvalue()
    assert not (cfg.run_dir / LOCK_FILE).exists()


def test_a_lock_from_another_host_is_taken_over_only_when_resuming(tmp_path) -> None:
    (tmp_path / LOCK_FILE).write_text(json.dumps({"host": "node-7", "pid": 4242}))
    with pytest.raises(MacasrError, match=r"is locked by a training run on another host \(pid 4242 on host node-7, see .*\); "
                                          r"if that run has ended, continue with --resume \(takes the lock over\)"):
        RunLock(tmp_path).acquire(resume=False)
    with RunLock(tmp_path).acquire(resume=True) as lock:
        assert lock.taken_over == "took over the lock of pid 4242 on host node-7 (on another host; make sure that run has ended)"
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert not (tmp_path / LOCK_FILE).exists()


# ----------------------------------------------------------------------------- failed checkpoint writes


@contextlib.contextmanager
def disk_full_after(limit: int, monkeypatch):
    """checkpoint.atomic_open whose file raises ENOSPC once `limit` bytes are written."""
    real = checkpoint.atomic_open

    class Full:
        def __init__(self, f) -> None:
            self.f, self.written = f, 0

        def write(self, data) -> int:
            if self.written + len(data) > limit:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.written += len(data)
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

    @contextlib.contextmanager
    def full(path):
        with real(path) as f:
            yield Full(f)

    monkeypatch.setattr(checkpoint, "atomic_open", full)
    yield


def test_a_checkpoint_write_that_fails_midway_keeps_the_previous_one(tmp_path, monkeypatch) -> None:
    path = tmp_path / "last.pt"
    checkpoint.save_checkpoint(path, {"model": {"w": torch.ones(4)}, "config": {}, "step": 1})
    with disk_full_after(5_000, monkeypatch), pytest.raises(CheckpointError) as error:
        checkpoint.save_checkpoint(path, {"model": {"w": torch.zeros(100_000)}, "config": {}, "step": 2})
    assert str(error.value) == f"{path}: not written (No space left on device); the previous last.pt is unchanged"
    assert checkpoint.load_checkpoint(path)["step"] == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_a_run_whose_checkpoint_write_fails_stops_in_one_line(tiny_config, corpus, tmp_path, monkeypatch) -> None:
    cfg = run_config(tiny_config, corpus, tmp_path, **{"train.max_steps": 3})
    real, writes = checkpoint.save_checkpoint, []

    def save(path, payload):
        writes.append(path)
        if payload["step"] == 2:
            with disk_full_after(1_000, monkeypatch):
                return real(path, payload)
        return real(path, payload)

    monkeypatch.setattr(checkpoint, "save_checkpoint", save)
    result = runner.invoke(app, ["train", str(config_module.dump(cfg, tmp_path / "c.toml"))])
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: {cfg.run_dir / 'best.pt'}: not written (No space left on device); the previous best.pt is unchanged"
    assert checkpoint.load_checkpoint(cfg.run_dir / "last.pt")["step"] == 1
    assert not (cfg.run_dir / LOCK_FILE).exists() and not list(cfg.run_dir.glob(".*.tmp"))


def test_a_real_write_failure_is_one_line(tmp_path) -> None:
    """A file-size limit (RLIMIT_FSIZE) makes the kernel refuse the write itself (EFBIG), as a full disk does (ENOSPC)."""
    path = tmp_path / "last.pt"
    code = f"""
import resource, signal, torch
from macasr.errors import CheckpointError
from macasr.train.checkpoint import save_checkpoint
save_checkpoint({str(path)!r}, {{"model": {{"w": torch.ones(4)}}, "config": {{}}, "step": 1}})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
try:
    save_checkpoint({str(path)!r}, {{"model": {{"w": torch.zeros(100_000)}}, "config": {{}}, "step": 2}})
except CheckpointError as e:
    print(e)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.stdout.strip() == f"{path}: not written (File too large); the previous last.pt is unchanged", out.stderr
    assert checkpoint.load_checkpoint(path)["step"] == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into a read-only folder regardless of its mode")
def test_a_read_only_run_folder_is_one_line(tmp_path) -> None:
    path = tmp_path / "last.pt"
    checkpoint.save_checkpoint(path, {"model": {"w": torch.ones(4)}, "config": {}, "step": 1})
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(CheckpointError) as error:
            checkpoint.save_checkpoint(path, {"model": {"w": torch.ones(4)}, "config": {}, "step": 2})
    finally:
        tmp_path.chmod(0o755)
    assert str(error.value).startswith(f"{path}: not written (Permission denied: ")
    assert str(error.value).endswith("; the previous last.pt is unchanged")
    assert checkpoint.load_checkpoint(path)["step"] == 1
