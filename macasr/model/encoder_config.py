"""The speech encoders' configs and their registry, without torch (`macasr.config` reads them
while the CLI starts); the encoders themselves are in `macasr.model.encoders`, which registers
each class under the name declared here."""

from __future__ import annotations

import dataclasses
from typing import Literal

from macasr.model.lora import WHISPER_TARGETS, LoraConfig
from macasr.registry import ComponentConfig, Registry, option


@dataclasses.dataclass(frozen=True)
class EncoderConfig(ComponentConfig):
    path: str = option("openai/whisper-large-v3", "Hugging Face id or local folder of the encoder checkpoint.")
    train: bool = option(False, "Train the encoder too (false keeps it frozen, the usual choice).")
    lora: LoraConfig = option(LoraConfig(target_modules=WHISPER_TARGETS), "LoRA adapters on the encoder.")

    def validate(self) -> list[str]:
        problems = super().validate()
        if self.train and self.lora.enabled:
            # LoRA freezes the base weights; training them too would be full fine-tuning in disguise.
            problems.append("[model.encoder] train: LoRA ([model.encoder.lora] enabled) and full fine-tuning "
                            "(train = true) are mutually exclusive; set one of them to false")
        return problems


@dataclasses.dataclass(frozen=True)
class WhisperEncoderConfig(EncoderConfig):
    name: str = option("whisper", "Which encoder to use.")
    window: Literal["own", "full"] = option("own", "own: encode each clip at its own length (cheap); full: pad each clip (each 30 s window of a longer one) to Whisper's 30 s window, as it was trained, and keep the clip's own frames.")


# ----------------------------------------------------------------------------- HuBERT, WavLM, wav2vec2

PATH_HELP = "Hugging Face id or local folder of the encoder checkpoint."
LORA_HELP = "LoRA adapters on the encoder."
# WavLM's attention hands its q/k/v/out weights straight to F.multi_head_attention_forward, never
# calling those Linear layers, so adapters there would not train: its default targets the feed-forward.
WAVLM_TARGETS = ["intermediate_dense", "output_dense"]


@dataclasses.dataclass(frozen=True)
class SSLEncoderConfig(EncoderConfig):
    layer: int = option(0, "Output of this transformer layer (1 = first; the layers above are dropped); 0 = the model's last hidden state.")

    def validate(self) -> list[str]:
        problems = super().validate()
        if self.layer < 0:
            problems.append(f"[model.encoder] layer: must be 0 (the last hidden state) or a layer number from 1, got {self.layer}")
        return problems


@dataclasses.dataclass(frozen=True)
class HubertEncoderConfig(SSLEncoderConfig):
    name: str = option("hubert", "Which encoder to use.")
    path: str = option("facebook/hubert-large-ls960-ft", PATH_HELP)


@dataclasses.dataclass(frozen=True)
class WavLMEncoderConfig(SSLEncoderConfig):
    name: str = option("wavlm", "Which encoder to use.")
    path: str = option("microsoft/wavlm-large", PATH_HELP)
    lora: LoraConfig = option(LoraConfig(target_modules=WAVLM_TARGETS), LORA_HELP)


@dataclasses.dataclass(frozen=True)
class Wav2Vec2EncoderConfig(SSLEncoderConfig):
    name: str = option("wav2vec2", "Which encoder to use.")
    path: str = option("facebook/wav2vec2-large-960h-lv60-self", PATH_HELP)


ENCODERS: Registry = Registry("encoder", EncoderConfig, module="macasr.model.encoders")
ENCODERS.declare("whisper", WhisperEncoderConfig)
ENCODERS.declare("hubert", HubertEncoderConfig)
ENCODERS.declare("wavlm", WavLMEncoderConfig)
ENCODERS.declare("wav2vec2", Wav2Vec2EncoderConfig)
