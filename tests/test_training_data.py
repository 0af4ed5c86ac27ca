"""What training draws: the resumed data position, mixing by weight, per-dataset targets, dropped targets."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import soundfile as sf
import torch
from rich.console import Console

from conftest import noise
from macasr import config as config_module
from macasr.data import loader
from macasr.errors import CheckpointError, DataError
from macasr.model.build import build_model
from macasr.train.engine import Trainer
from macasr.train.run import train, training_sets


@pytest.fixture(autouse=True)
def small_sampler_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    """An endless mixture of a few clips would fill lhotse's 30,000-cut start-up windows over and over."""
    monkeypatch.setattr(loader, "BINS_ESTIMATE_CUTS", 200)
    monkeypatch.setattr(loader, "BUFFER_CUTS", 100)
    monkeypatch.setattr(loader, "SHAR_BUFFER_CUTS", 50)


def run_config(tiny_config, out: Path, **changes):
    return config_module.replace(tiny_config, **{
        "train.output_dir": str(out), "train.name": "run", "train.warmup_steps": 0, "train.valid_every": 100,
        **changes,
    })


def make_trainer(cfg, console: Console | None = None) -> Trainer:
    return Trainer(cfg, build_model(cfg), *training_sets(cfg), torch.device("cpu"), "fp32",
                   console or Console(file=io.StringIO(), width=400))


def manifest(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def clips(folder: Path, prefix: str, n: int, text: str = "hello world", seconds: float = 0.5) -> list[dict]:
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        sf.write(folder / f"{prefix}{i}.wav", noise(seconds, seed=i), 16_000)
        rows.append({"audio": str(folder / f"{prefix}{i}.wav"), "text": text, "duration": seconds, "id": f"{prefix}{i}"})
    return rows


@pytest.fixture(scope="module")
def three_steps(tiny_config, corpus, tmp_path_factory):
    """The config of a finished 3-step run (2 micro-batches a step) read through a prefetching worker.
    (Set up before the small sampler windows apply; its 32 clips fit either window whole.)"""
    cfg = run_config(tiny_config, tmp_path_factory.mktemp("three_steps"), **{
        "data.train": [str(corpus["train"])], "data.num_workers": 1, "data.batch_size": 3, "train.max_steps": 3,
        "train.grad_accum": 2, "train.valid_every": 3,
    })
    train(cfg, Console(file=io.StringIO()))
    return cfg


def test_a_resumed_run_draws_the_batch_the_uninterrupted_run_draws_next(three_steps) -> None:
    """Through workers that prefetch: last.pt keeps what training consumed, not what was read ahead."""
    cfg = three_steps
    reference = make_trainer(config_module.replace(cfg, **{"data.num_workers": 0}))
    drawn = reference._batches()
    expected = [next(drawn).ids for _ in range(12)]  # an uninterrupted run, past the 6 batches of 3 steps and an epoch end
    resumed = make_trainer(config_module.replace(cfg, **{"data.num_workers": 0, "train.max_steps": 9}))
    resumed.resume(cfg.run_dir / "last.pt")
    assert (resumed.epoch, resumed.batches_in_epoch) == (0, 6)
    again = resumed._batches()
    assert [next(again).ids for _ in range(6)] == expected[6:]


def test_resuming_with_other_batch_limits_is_refused(three_steps) -> None:
    trainer = make_trainer(config_module.replace(three_steps, **{"data.batch_size": 4, "train.max_steps": 9}))
    with pytest.raises(CheckpointError) as error:
        trainer.resume(three_steps.run_dir / "last.pt")
    assert str(error.value) == (f"{three_steps.run_dir / 'last.pt'}: the given config changes the model, data or optimizer this "
                                "run was trained with (data.batch_size: 3 in the checkpoint, 4 given); resume with the "
                                "settings stored in it (the run folder's config.toml), or start over with --overwrite")


def test_resuming_on_other_training_data_is_refused(three_steps, tmp_path: Path) -> None:
    # The same sampler position in other data is another batch: refused before any step, in one line.
    extra = manifest(tmp_path / "extra.jsonl", clips(tmp_path / "extra", "x", 2))
    other = config_module.replace(three_steps, **{"data.train": [*three_steps.data.train, str(extra)], "train.max_steps": 9})
    with pytest.raises(CheckpointError) as error:
        make_trainer(other).resume(three_steps.run_dir / "last.pt")
    message = str(error.value)
    assert len(message.splitlines()) == 1 and "the given config changes the model, data or optimizer" in message
    assert "data.train: [" in message and "extra.jsonl" in message and "resume with the settings stored in it" in message


def test_a_data_position_past_the_end_of_the_data_is_refused(three_steps, tmp_path: Path) -> None:
    # Same sources, but the manifest lost clips since: the saved position runs off its end.
    from macasr.data.loader import restore_sampler, sampler_state

    trainer = make_trainer(config_module.replace(three_steps, **{"train.max_steps": 9}))
    state = sampler_state(trainer.sampler, 0, 10_000)
    with pytest.raises(ValueError, match="the training data ends before the saved data position"):
        restore_sampler(trainer.sampler, state)


def test_several_datasets_mix_by_weight_without_end(tiny_config, tmp_path: Path) -> None:
    a = manifest(tmp_path / "a.jsonl", clips(tmp_path / "a", "a", 2))
    b = manifest(tmp_path / "b.jsonl", clips(tmp_path / "b", "b", 4))
    cfg = run_config(tiny_config, tmp_path, **{
        "datasets": {"small": config_module.DatasetConfig(manifest=[str(a)], weight=3.0),
                     "large": config_module.DatasetConfig(manifest=[str(b)], weight=1.0)},
        "data.train": ["small", "large"], "data.batch_size": 2,
    })
    trainer = make_trainer(cfg)
    drawn = trainer._batches()
    ids = [i for _ in range(100) for i in next(drawn).ids]
    assert trainer.epoch == 0  # 200 clips from 6: no epochs in an endless mixture
    share = sum(i.startswith("a") for i in ids) / len(ids)
    assert 0.65 < share < 0.85  # weight 3 : 1


def test_each_dataset_shapes_its_own_targets(tiny_config, tmp_path: Path) -> None:
    shouting = manifest(tmp_path / "s.jsonl", clips(tmp_path / "s", "s", 2, text="HELLO [laughter] WORLD"))
    cfg = run_config(tiny_config, tmp_path, **{
        "datasets": {"s": config_module.DatasetConfig(manifest=[str(shouting)], text="lower", drop_annotations=True)},
        "data.train": ["s"], "data.valid": ["s"],
    })
    trainer = make_trainer(cfg)
    batch = next(trainer._batches())
    assert batch.texts == ["hello world", "hello world"]
    tokenizer = trainer.model.tokenizer
    assert tokenizer.decode(batch.targets[0, : batch.target_lengths[0] - 1].tolist()).strip() == "hello world"
    assert {c.supervisions[0].text for c in trainer.valid} == {"hello world"}  # validation references too


def test_a_target_longer_than_the_decoder_may_emit_is_dropped_and_named_once(tiny_config, tmp_path: Path) -> None:
    rows = clips(tmp_path / "c", "c", 3, seconds=0.5)
    rows[1]["text"] = " ".join(["hello world"] * 20)  # 40 words in 0.5 s: over 10 tokens/s * 0.5 s + 16
    m = manifest(tmp_path / "m.jsonl", rows)
    cfg = run_config(tiny_config, tmp_path, **{"data.train": [str(m)], "data.batch_size": 4})
    console = Console(file=io.StringIO(), width=400)
    trainer = make_trainer(cfg, console)
    drawn = trainer._batches()
    seen = {i for _ in range(4) for i in next(drawn).ids}  # two epochs
    assert seen == {"c0", "c2"}
    lines = [line for line in console.file.getvalue().splitlines() if line.startswith("dropped clip:")]
    assert len(lines) == 1 and lines[0].startswith(f"dropped clip: c1 ({m}:2): its target has ")
    assert "more than the 21 that 0.50 s allow" in lines[0] and lines[0].endswith("1 dropped so far")


def test_a_mixture_of_unreadable_clips_stops_instead_of_looping(tiny_config, tmp_path: Path) -> None:
    rows = [{"audio": str(tmp_path / f"gone{i}.wav"), "text": "hi", "duration": 1.0, "id": f"g{i}"} for i in range(2)]
    a, b = manifest(tmp_path / "a.jsonl", rows[:1]), manifest(tmp_path / "b.jsonl", rows[1:])
    cfg = run_config(tiny_config, tmp_path, **{"data.train": [str(a), str(b)], "train.max_steps": 1})
    with pytest.raises(Exception, match=r"^\[data\] train: 100 batches in a row held no readable clip"):
        train(cfg, Console(file=io.StringIO()))


def test_eval_results_are_in_manifest_order_and_the_same_for_any_batch_size(tiny_config, model, corpus) -> None:
    from macasr.data.manifest import open_cuts
    from macasr.evaluate.run import evaluate_cuts

    cuts = list(open_cuts(corpus["test"]))
    scores = [evaluate_cuts(model, cuts, "test", config_module.replace(tiny_config, **{"eval.batch_size": size}),
                            torch.device("cpu"), "fp32") for size in (1, 4)]
    assert [u.id for u in scores[0].per_utterance] == [c.id for c in cuts]  # decoded longest first, reported in order
    assert scores[0].per_utterance == scores[1].per_utterance


def test_training_reads_lhotse_cut_manifests_and_shar_folders(tiny_config, tmp_path: Path) -> None:
    from lhotse import CutSet, MonoCut, Recording, SupervisionSegment

    def cuts(prefix: str) -> CutSet:
        made = []
        for row in clips(tmp_path / prefix, prefix, 2):
            recording = Recording.from_file(row["audio"], recording_id=row["id"])
            supervision = SupervisionSegment(id=row["id"], recording_id=row["id"], start=0.0, duration=0.5, text=row["text"])
            made.append(MonoCut(id=row["id"], start=0.0, duration=0.5, channel=0, recording=recording, supervisions=[supervision]))
        return CutSet.from_cuts(made)

    cuts("l").to_file(tmp_path / "l.jsonl.gz")
    (tmp_path / "shar").mkdir()
    cuts("s").to_shar(tmp_path / "shar", fields={"recording": "flac"}, shard_size=1)
    (tmp_path / "l" / "l1.wav").unlink()
    cfg = run_config(tiny_config, tmp_path, **{"data.train": [str(tmp_path / "l.jsonl.gz"), str(tmp_path / "shar")]})
    trainer = make_trainer(cfg)
    drawn = trainer._batches()
    seen = {i for _ in range(10) for i in next(drawn).ids}
    assert seen == {"l0", "s0", "s1"}  # ids as in the manifests; Shar audio travels inside the shards
    assert trainer.sampler.buffer_size == loader.SHAR_BUFFER_CUTS  # cuts holding their audio: a smaller window
    records = [json.loads(line) for line in (cfg.run_dir / "bad_clips.jsonl").read_text().splitlines()]
    assert records == [{"origin": str(tmp_path / "l.jsonl.gz"), "id": "l1", "audio": str(tmp_path / "l" / "l1.wav"),
                        "why": "no such audio file"}]


def test_augment_settings_reach_the_training_clips(tiny_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from macasr.train import run as run_module

    m = manifest(tmp_path / "m.jsonl", clips(tmp_path / "c", "c", 2, seconds=1.1))
    cfg = run_config(tiny_config, tmp_path, **{"data.train": [str(m)], "train.max_steps": 1,
                                               "augment.speed_prob": 1.0, "augment.speed_factors": [1.1]})
    durations = []

    class Recording(Trainer):
        def _batches(self):  # the clips of the one step taken
            for batch in super()._batches():
                durations.extend(batch.durations)
                yield batch

    monkeypatch.setattr(run_module, "Trainer", Recording)
    train(cfg, Console(file=io.StringIO()))
    assert durations == [pytest.approx(1.0, abs=1e-3)] * 2  # 1.1 s played 1.1 times faster


def test_a_mixed_dataset_that_its_duration_limits_empty_is_refused(tiny_config, tmp_path: Path) -> None:
    # Asked for a 1:1 mix, the run must not silently train on one dataset alone.
    a = manifest(tmp_path / "a.jsonl", clips(tmp_path / "a", "a", 2, seconds=0.5))
    b = manifest(tmp_path / "b.jsonl", clips(tmp_path / "b", "b", 2, seconds=1.0))
    cfg = run_config(tiny_config, tmp_path, **{
        "datasets": {"short": config_module.DatasetConfig(manifest=[str(a)], max_duration=0.2),
                     "long": config_module.DatasetConfig(manifest=[str(b)])},
        "data.train": ["short", "long"],
    })
    with pytest.raises(DataError, match=r"none of the 2 clips of `short` is within its duration limits \(at most 0.2 s;"):
        train(cfg, Console(file=io.StringIO()))
