"""Loading models by `path`: every way a path can point nowhere is one line, said at once.

Nothing here reaches a network: the unreachable hub is a closed loopback port, the reachable one
a local HTTP server, and the hub cache a temporary folder.
"""

from __future__ import annotations

import http.server
import logging
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import SENTENCES
from macasr import testing
from macasr.config import LLMConfig
from macasr.errors import MacasrError
from macasr.model._hf import hub_unreachable
from macasr.model.encoders import ENCODERS, HubertEncoderConfig, WhisperEncoderConfig
from macasr.model.llm import load_llm

CLOSED = "http://127.0.0.1:9"  # the discard port: nothing listens, so connections are refused at once


def load(part: str, path: str) -> None:
    """Load the LLM, the Whisper encoder or the HuBERT encoder from `path`."""
    if part == "llm":
        load_llm(LLMConfig(path=path))
    else:
        ENCODERS.build((WhisperEncoderConfig if part == "whisper" else HubertEncoderConfig)(path=path))


def one_line_error(part: str, path: str) -> str:
    with pytest.raises(MacasrError) as info:
        load(part, path)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.fixture(scope="session")
def hubert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return testing.save_tiny_ssl_encoder(tmp_path_factory.mktemp("ssl") / "hubert", "hubert")


@pytest.fixture
def folders(tiny_models, hubert) -> dict[str, Path]:
    whisper, qwen = tiny_models
    return {"llm": qwen, "whisper": whisper, "hubert": hubert}


def copy_without(folder: Path, dest: Path, *names: str) -> Path:
    shutil.copytree(folder, dest)
    for name in names:
        (dest / name).unlink()
    return dest


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Online mode (HF_HUB_OFFLINE unset), a hub that refuses connections, an empty hub cache (returned)."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", CLOSED)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    return tmp_path / "hub-cache"


def cache(hub_cache: Path, repo_id: str, folder: Path) -> None:
    """Put `folder`'s files in the hub cache as a download of `repo_id` leaves them."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = hub_cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def assert_quiet(capfd: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture) -> None:
    """Nothing printed and nothing logged as a warning (huggingface_hub logs each retry)."""
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


# ----------------------------------------------------------------------------- local folders


@pytest.mark.parametrize("path", ["/no/such/model", "./no-such-model", "../no-such-model", "~/no-such-macasr-model", "a/b/model", "models/qwen"])
@pytest.mark.parametrize("part", ["llm", "whisper", "hubert"])
def test_a_missing_folder_is_said_to_not_exist(part, path, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()  # an existing parent makes `models/qwen` a folder, not a hub id
    message = one_line_error(part, path)
    assert message == f"[model.{'llm' if part == 'llm' else 'encoder'}] path: cannot load {path!r}: the folder does not exist"


def test_a_file_as_path_is_said_to_be_a_file(tmp_path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert "it is a file" in one_line_error("llm", str(tmp_path / "model.safetensors"))


def test_a_folder_with_tilde_loads(folders, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    shutil.copytree(folders["llm"], tmp_path / "qwen")
    load("llm", "~/qwen")


def test_an_llm_folder_without_tokenizer_files_is_refused(folders, tmp_path) -> None:
    """It would load a one-token tokenizer: every transcript empty, training at 100 % WER."""
    folder = copy_without(folders["llm"], tmp_path / "qwen", "tokenizer.json", "tokenizer_config.json")
    message = one_line_error("llm", str(folder))
    assert str(folder) in message and "has no tokenizer files (tokenizer.json" in message


def test_a_tokenizer_that_cannot_encode_text_is_refused(tmp_path) -> None:
    """A vocabulary of two words: everything else becomes <unk>, so transcripts would lose text."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"<unk>": 0, "<|endoftext|>": 1, "hello": 2, "world": 3}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<|endoftext|>")
    folder = testing.save_tiny_qwen3(tmp_path / "qwen", tokenizer)
    message = one_line_error("llm", str(folder))
    assert f"cannot load {str(folder)!r}: its tokenizer cannot encode plain text" in message


@pytest.mark.parametrize("part", ["whisper", "hubert"])
def test_an_encoder_folder_without_its_feature_extractor_is_refused(part, folders, tmp_path) -> None:
    folder = copy_without(folders[part], tmp_path / part, "preprocessor_config.json")
    message = one_line_error(part, str(folder))
    assert message == (f"[model.encoder] path: cannot load '{folder}': the folder has no preprocessor_config.json "
                       "(the feature extractor's settings); copy it from the model's hub repo")


@pytest.mark.parametrize("part", ["llm", "whisper"])
def test_a_folder_without_config_json_is_refused(part, folders, tmp_path) -> None:
    folder = copy_without(folders[part], tmp_path / part, "config.json")
    assert "the folder has no config.json (the model's architecture)" in one_line_error(part, str(folder))


# ----------------------------------------------------------------------------- hub ids


@pytest.mark.parametrize("part", ["llm", "whisper"])
def test_an_unreachable_hub_id_is_one_line_at_once(part, online, capfd, caplog) -> None:
    """No retries (huggingface_hub's backoff prints about twenty lines over most of a minute)."""
    message = one_line_error(part, "macasr-test/absent-model")
    assert "cannot load 'macasr-test/absent-model': it is neither a local folder nor reachable on the hub" in message
    assert CLOSED in message and "hf download macasr-test/absent-model --local-dir DIR" in message
    assert_quiet(capfd, caplog)


def test_a_hub_id_offline_and_not_cached_says_so(monkeypatch, tmp_path) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    message = one_line_error("llm", "macasr-test/absent-model")
    assert "neither a local folder nor in the hub cache, and HF_HUB_OFFLINE is set" in message


def test_a_cached_hub_id_loads_quietly_while_the_hub_is_unreachable(online, folders, capfd, caplog) -> None:
    cache(online, "macasr-test/tiny-qwen3", folders["llm"])
    cache(online, "macasr-test/tiny-whisper", folders["whisper"])
    capfd.readouterr()
    load("llm", "macasr-test/tiny-qwen3")
    load("whisper", "macasr-test/tiny-whisper")
    assert_quiet(capfd, caplog)


def test_a_cached_hub_id_loads_offline(folders, monkeypatch, tmp_path) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    cache(tmp_path, "macasr-test/tiny-qwen3", folders["llm"])
    load("llm", "macasr-test/tiny-qwen3")


@pytest.fixture
def answering_hub() -> Iterator[str]:
    """A local HTTP server that answers every request with 404, as the hub does for unknown repos."""

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_the_probe_tells_an_answering_hub_from_a_closed_one(online, answering_hub, monkeypatch) -> None:
    from huggingface_hub import constants

    assert CLOSED in hub_unreachable("org/name")
    monkeypatch.setattr(constants, "ENDPOINT", answering_hub)
    assert hub_unreachable("org/name") is None  # any answer, a 404 included, means the hub is there


def test_plan_of_an_unreachable_hub_id_is_one_line_at_once(online, capfd, caplog) -> None:
    """`macasr plan` reads architecture configs; an id we ship none for goes through the same probe."""
    from macasr.plan import architecture_config

    with pytest.raises(MacasrError) as caught:
        architecture_config("macasr-test/absent-model", "model.llm")
    assert "cannot load 'macasr-test/absent-model': it is neither a local folder nor reachable on the hub" in str(caught.value)
    assert "\n" not in str(caught.value)
    assert_quiet(capfd, caplog)


@pytest.mark.parametrize(("part", "damage"), [
    ("llm", "truncated_weights"), ("llm", "tokenizer_not_json"), ("whisper", "truncated_weights"),
])
def test_a_damaged_model_folder_is_one_line(part, damage, folders, tmp_path) -> None:
    """A half-copied folder used to end in a 60-line traceback from safetensors or json."""
    folder = copy_without(folders[part], tmp_path / part)
    if damage == "truncated_weights":
        weights = folder / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    else:
        (folder / "tokenizer.json").write_text("{")
    message = one_line_error(part, str(folder))
    assert message.startswith(f"[model.{'llm' if part == 'llm' else 'encoder'}] path: cannot load '{folder}': ")
    assert message.endswith("a file in the model folder may be damaged, incomplete or missing")
