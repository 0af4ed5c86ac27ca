"""Small helpers around transformers and the Hugging Face Hub that several model modules share.

`locate` decides, before transformers is asked, where a `path` setting points: an existing local
folder (checked for the files its part needs), a hub id in the local cache, or a hub id on a hub
that answers. Anything else is one line naming the key and what to do, at once: transformers
would otherwise read a missing folder as a malformed hub id, and without network
huggingface_hub retries each file with backoff (about twenty log lines over most of a minute)
before giving up.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping
from pathlib import Path

from safetensors import SafetensorError

from macasr.errors import MacasrError

HUB_PROBE_SECONDS = 5.0  # one request, no retries: a hub that does not answer in this is unreachable
HUB_FILE = "config.json"  # every model repo has one; its presence in the cache marks a cached model


@dataclasses.dataclass(frozen=True)
class Source:
    """Where `from_pretrained` finds a model: a local folder, or a hub id (online or from the cache)."""

    path: str  # a local folder (with `~` expanded) or a hub id
    offline: bool = False  # a cached hub id while the hub cannot be reached: load as with HF_HUB_OFFLINE=1


def locate(key: str, path: str, required: Mapping[str, str] | None = None) -> Source:
    """Where `path` (the value of `[key] path`) is, or a one-line MacasrError saying why it is nowhere.

    `required` maps file names a local folder must hold to what they are (named in the error).
    A hub id is used when it is in the local cache or the hub answers one short probe; with
    HF_HUB_OFFLINE=1 only the cache counts. Raises MacasrError.
    """
    folder = Path(path).expanduser()
    if folder.is_dir():
        _require_files(key, folder, required or {})
        return Source(str(folder))
    if folder.exists():
        raise MacasrError(f"[{key}] path: cannot load {path!r}: it is a file; expected a model folder or a hub id (org/name)")
    if is_local_path(path):
        raise MacasrError(f"[{key}] path: cannot load {path!r}: the folder does not exist")
    _check_repo_id(key, path)
    return _hub_source(key, path)


def _require_files(key: str, folder: Path, required: Mapping[str, str]) -> None:
    missing = [f"{name} ({what})" for name, what in required.items() if not (folder / name).is_file()]
    if missing:
        raise MacasrError(f"[{key}] path: cannot load '{folder}': the folder has no {', no '.join(missing)}; copy {'them' if len(missing) > 1 else 'it'} from the model's hub repo")


def is_local_path(path: str) -> bool:
    """True for what can only be a filesystem path, never a hub id (`name` or `org/name`): loading
    and `config check` tell the two apart by this one rule."""
    parent = Path(path).expanduser().parent
    return (
        path.startswith(("/", "./", "../", "~")) or "\\" in path or path.count("/") > 1
        or (parent != Path(".") and parent.is_dir())
    )


def _check_repo_id(key: str, path: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(path)
    except HFValidationError as e:
        raise MacasrError(f"[{key}] path: cannot load {path!r}: it is neither an existing folder nor a hub id (org/name)") from e


def _hub_source(key: str, repo_id: str) -> Source:
    """A hub id: from the hub when it answers, else from the local cache, else an error."""
    from huggingface_hub import constants, try_to_load_from_cache

    cached = isinstance(try_to_load_from_cache(repo_id, HUB_FILE), str)
    hint = f"download it where the hub is reachable (`hf download {repo_id} --local-dir DIR`) and set [{key}] path = DIR"
    if constants.is_offline_mode():
        if cached:
            return Source(repo_id, offline=True)
        raise MacasrError(f"[{key}] path: cannot load {repo_id!r}: it is neither a local folder nor in the hub cache, and HF_HUB_OFFLINE is set; {hint}")
    why = hub_unreachable(repo_id)
    if why is None:
        return Source(repo_id)
    if cached:
        return Source(repo_id, offline=True)
    raise MacasrError(f"[{key}] path: cannot load {repo_id!r}: it is neither a local folder nor reachable on the hub ({why}); {hint}")


def hub_unreachable(repo_id: str) -> str | None:
    """Why the hub cannot be reached (one short request, no retries), or None when it answers.

    Any HTTP answer counts as reachable, a 401 or 404 included: transformers then reports it.
    """
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    url = f"{constants.ENDPOINT}/api/models/{repo_id}"
    try:
        get_session().head(url, timeout=HUB_PROBE_SECONDS)
    except Exception as e:  # noqa: BLE001 - the HTTP library is huggingface_hub's choice; any failure is no answer
        return f"{constants.ENDPOINT}: {_first_line(e) or type(e).__name__}"
    return None


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [""])[0]


@contextlib.contextmanager
def loading(key: str, path: str, offline: bool = False) -> Iterator[None]:
    """Load quietly and explain failures in one line naming the config key.

    Silences transformers' load report while we load part of a checkpoint on purpose (the
    Whisper encoder without its decoder lists every decoder weight as UNEXPECTED) and its
    progress bars; a missing model or folder becomes `[model.llm] path: cannot load ...`.
    `offline` (see `Source.offline`) switches huggingface_hub's offline mode on meanwhile, so
    no call asks the hub (`local_files_only` alone does not reach transformers' adapter lookup).
    """
    from huggingface_hub import constants
    from transformers.utils import logging

    level = logging.get_verbosity()
    bars = logging.is_progress_bar_enabled()
    was_offline = constants.HF_HUB_OFFLINE
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    constants.HF_HUB_OFFLINE = was_offline or offline
    try:
        yield
    except OSError as e:
        raise MacasrError(f"[{key}] path: cannot load {path!r}: {_first_line(e)}") from e
    except (ValueError, KeyError, RuntimeError, SafetensorError) as e:
        # A damaged or half-copied folder: a truncated model.safetensors, a tokenizer.json that is not
        # JSON, vocab.json without merges.txt. MACASR_DEBUG=1 shows the traceback.
        raise MacasrError(f"[{key}] path: cannot load {path!r}: {type(e).__name__}: {_first_line(e)}; "
                          "a file in the model folder may be damaged, incomplete or missing") from e
    finally:
        constants.HF_HUB_OFFLINE = was_offline
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()
