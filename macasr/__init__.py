"""macasr: speech-LLM ASR — a frozen speech encoder, a trainable connector, a causal LLM.

Python API:
    >>> import macasr
    >>> transcriber = macasr.load("runs/demo/best.pt")
    >>> [t.text for t in transcriber.transcribe(["clip.wav"])]
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from macasr.infer.transcribe import Transcriber


def load(checkpoint: str, device: str = "auto") -> Transcriber:
    """A `Transcriber` from a training checkpoint (best.pt, last.pt)."""
    from macasr.infer.transcribe import Transcriber

    return Transcriber.from_checkpoint(checkpoint, device)


def __getattr__(name: str):
    if name == "Transcriber":
        from macasr.infer.transcribe import Transcriber

        return Transcriber
    raise AttributeError(name)
