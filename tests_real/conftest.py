"""`make test-real`: macasr with real pretrained models, run as a user runs it (the CLI, TOML files).

The models folder comes from MACASR_REAL_MODELS (the Makefile sets it to $(REAL_MODELS), built by
tools/realmodels/ensure.sh); without it, or with a folder that lacks a model or the recording,
every test here is skipped with a message naming the variable and the folder. Not collected by
`make test` (pyproject testpaths = ["tests"]).

One session fixture trains the run most tests share: 20 steps of the MLP connector (encoder and
LLM frozen) on a small espeak corpus, from a feature cache, with the chat prompt.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
from typer.testing import CliRunner, Result  # noqa: E402

from macasr.cli import app  # noqa: E402

ENV = "MACASR_REAL_MODELS"
ENCODER = "whisper-tiny.en"
LLM = "smollm2-135m-instruct"
NEEDED = (f"{ENCODER}/model.safetensors", "whisper-base/model.safetensors", f"{LLM}/model.safetensors",
          "recordings/sample.wav", "recordings/sample.stm")
STEPS = 20
runner = CliRunner()


def macasr(*args: str) -> Result:
    """Run a macasr command in-process; fail the test with its output when it exits non-zero."""
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, f"macasr {' '.join(map(str, args))} exited {result.exit_code}:\n{result.output}\n{result.exception!r}"
    return result


@pytest.fixture(scope="session")
def models() -> Path:
    """The real models folder, or a skip that says what is missing."""
    folder = os.environ.get(ENV)
    if not folder:
        pytest.skip(f"{ENV} is not set: run `make test-real` (it builds the real models) or set {ENV}=DIR")
    missing = [name for name in NEEDED if not (Path(folder) / name).is_file()]
    if missing:
        pytest.skip(f"{ENV}={folder} lacks {', '.join(missing)}: build it with tools/realmodels/ensure.sh {folder}")
    return Path(folder).resolve()


def write_config(path: Path, models: Path, data: Path, runs: Path, cache: Path) -> Path:
    """The TOML a user would write for these models and data (chat prompt, MLP connector)."""
    path.write_text(f"""\
[model.encoder]
name = "whisper"
path = "{models / ENCODER}"

[model.connector]
name = "mlp"
downsample = 4
hidden_dim = 1024

[model.llm]
path = "{models / LLM}"

[prompt]
style = "chat"

[data]
train = ["train"]
batch_size = 4
num_workers = 0
cache = "{cache}"

[train]
name = "real"
output_dir = "{runs}"
max_steps = {STEPS}
lr = 1e-3
warmup_steps = 2
valid_every = {STEPS}
device = "cpu"

[eval]
batch_size = 8
vad = false
test_sets = ["test"]

[logging]
log_every = 1
curves = false

[datasets.train]
manifest = ["{data / 'train.jsonl'}"]

[datasets.valid]
manifest = ["{data / 'valid.jsonl'}"]

[datasets.test]
manifest = ["{data / 'test.jsonl'}"]
""")
    return path


@dataclass(frozen=True)
class Workspace:
    config: Path
    data: Path
    run: Path  # the trained run folder: best.pt, last.pt, metrics.jsonl


@pytest.fixture(scope="session")
def workspace(models: Path, tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """Corpus, cache, config, and the trained run the tests share."""
    from macasr.data import synth

    root = tmp_path_factory.mktemp("real")
    synth.build_corpus(root / "data", n_train=48, n_valid=4, n_test=6, n_unseen=0, seed=0)
    config = write_config(root / "real.toml", models, root / "data", root / "runs", root / "cache")
    macasr("cache", "build", config)
    macasr("train", config)
    return Workspace(config, root / "data", root / "runs" / "real")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
