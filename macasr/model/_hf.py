"""Small helpers around transformers that several model modules share."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from macasr.errors import MacasrError


@contextlib.contextmanager
def loading(key: str, path: str) -> Iterator[None]:
    """Load quietly and explain failures in one line naming the config key.

    Silences transformers' load report while we load part of a checkpoint on purpose (the
    Whisper encoder without its decoder lists every decoder weight as UNEXPECTED) and its
    progress bars; a missing model or folder becomes `[model.llm] path: cannot load ...`.
    """
    from transformers.utils import logging

    level = logging.get_verbosity()
    bars = logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    except OSError as e:
        raise MacasrError(f"[{key}] path: cannot load {path!r}: {str(e).strip().splitlines()[0]}") from e
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()
