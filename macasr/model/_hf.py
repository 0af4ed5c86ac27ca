"""Small helpers around transformers that several model modules share."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """Silence transformers' load report while loading part of a checkpoint on purpose (the Whisper
    encoder without its decoder lists every decoder weight as UNEXPECTED) and its progress bars."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    bars = logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()
