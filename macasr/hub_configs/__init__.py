"""Architecture configs (config.json as published on the Hugging Face Hub) of the models our presets use.

`macasr plan` builds models on the meta device from these, so it works offline and before any
weights are downloaded. Files are named `<org>--<name>.json` after the hub id (the hub cache's
own convention). Only architecture matters here: generation-only fields (Whisper's
`suppress_tokens`, `forced_decoder_ids`) that newer checkpoints keep in generation_config.json
are left out. To add a model, save its config.json under that name.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

PACKAGE = "macasr.hub_configs"


def file_name(model_id: str) -> str:
    """'Qwen/Qwen3-1.7B' → 'Qwen--Qwen3-1.7B.json'."""
    return model_id.replace("/", "--") + ".json"


def names() -> list[str]:
    """Hub ids with a shipped config."""
    files = resources.files(PACKAGE).iterdir()
    return sorted(f.name.removesuffix(".json").replace("--", "/") for f in files if f.name.endswith(".json"))


def load(model_id: str) -> dict[str, Any] | None:
    """The shipped config.json of `model_id` as a dict, or None when we ship none."""
    if model_id.count("/") != 1:
        return None
    entry = resources.files(PACKAGE).joinpath(file_name(model_id))
    return json.loads(entry.read_text("utf-8")) if entry.is_file() else None
