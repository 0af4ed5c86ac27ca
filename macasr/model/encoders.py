"""Speech encoders: audio → frames (B, T, D) at the encoder's own frame rate.

Symbols: B batch, C feature bins (log-mel), L feature frames, T encoder frames, D encoder width.

Whisper is encoded at each clip's own length, not padded to 30 s: transformers' `WhisperEncoder`
insists on 3,000 mel frames, so we run its convolutions and layers ourselves and slice the
positional table. Padding is masked at every step (input, after conv1, attention keys, output),
so a clip's frames do not depend on what it is batched with. Clips longer than one 30 s window
are encoded window by window and the frames joined, never cut.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from macasr.model._hf import loading
from macasr.model.lora import WHISPER_TARGETS, LoraConfig
from macasr.registry import ComponentConfig, Registry, option


@dataclasses.dataclass(frozen=True)
class EncoderConfig(ComponentConfig):
    path: str = option("openai/whisper-large-v3", "Hugging Face id or local folder of the encoder checkpoint.")
    train: bool = option(False, "Train the encoder too (false keeps it frozen, the usual choice).")
    lora: LoraConfig = option(LoraConfig(target_modules=WHISPER_TARGETS), "LoRA adapters on the encoder.")


@dataclasses.dataclass(frozen=True)
class WhisperEncoderConfig(EncoderConfig):
    name: str = option("whisper", "Which encoder to use.")


ENCODERS: Registry[nn.Module] = Registry("encoder", EncoderConfig)


class WhisperFeaturizer:
    """Waveform (16 kHz mono float32) → Whisper log-mel (C, L), settings from the checkpoint.

    Plain data and torch ops only, so DataLoader workers can pickle it. Matches transformers'
    `WhisperFeatureExtractor` on an unpadded clip (center STFT, drop the last frame, log10,
    clamp to max - 8, scale (x + 4) / 4).
    """

    def __init__(self, mel_filters: np.ndarray, n_fft: int, hop_length: int, sampling_rate: int) -> None:
        self.mel_filters = torch.from_numpy(np.asarray(mel_filters, dtype=np.float32))  # (n_fft/2+1, C)
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.sampling_rate = sampling_rate

    @property
    def num_bins(self) -> int:
        return self.mel_filters.shape[1]

    def num_frames(self, num_samples: int) -> int:
        return max(num_samples, self.n_fft) // self.hop_length

    def __call__(self, waveform: np.ndarray | torch.Tensor) -> torch.Tensor:
        wave = torch.as_tensor(waveform, dtype=torch.float32)
        if wave.numel() < self.n_fft:  # reflect padding needs a few hundred samples
            wave = nn.functional.pad(wave, (0, self.n_fft - wave.numel()))
        window = torch.hann_window(self.n_fft)
        stft = torch.stft(wave, self.n_fft, self.hop_length, window=window, return_complex=True)
        power = stft[..., :-1].abs() ** 2  # (n_fft/2+1, L)
        mel = self.mel_filters.T @ power  # (C, L)
        log_spec = torch.clamp(mel, min=1e-10).log10()
        log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
        return (log_spec + 4.0) / 4.0


def _mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    """(B, size) bool, True at valid positions."""
    return torch.arange(size, device=lengths.device)[None, :] < lengths[:, None]


@ENCODERS.register("whisper", WhisperEncoderConfig)
class WhisperEncoder(nn.Module):
    """A Hugging Face Whisper encoder (any size) that accepts variable-length input."""

    def __init__(self, cfg: WhisperEncoderConfig, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        from transformers import WhisperFeatureExtractor
        from transformers.models.whisper.modeling_whisper import WhisperEncoder as HFWhisperEncoder

        # Checkpoints store the encoder under model.encoder (full model) or encoder (WhisperModel).
        with loading("model.encoder", cfg.path):
            self.model = HFWhisperEncoder.from_pretrained(
                cfg.path, dtype=dtype, key_mapping={r"^(model\.)?encoder\.": ""}, attn_implementation="sdpa"
            )
            fe = WhisperFeatureExtractor.from_pretrained(cfg.path)
        self.featurizer = WhisperFeaturizer(fe.mel_filters, fe.n_fft, fe.hop_length, fe.sampling_rate)
        conv_stride = self.model.conv1.stride[0] * self.model.conv2.stride[0]
        self.window_frames = self.model.config.max_source_positions * conv_stride  # 3000 mel frames = 30 s
        self.output_dim: int = self.model.config.d_model
        self.frame_rate: float = fe.sampling_rate / fe.hop_length / conv_stride  # 50 Hz

    def output_lengths(self, feature_lengths: torch.Tensor) -> torch.Tensor:
        """Encoder frames per clip: conv2 halves the mel frames, rounding up, per window."""
        full, rest = feature_lengths // self.window_frames, feature_lengths % self.window_frames
        return full * (self.window_frames // 2) + (rest + 1) // 2

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """features (B, C, L), lengths (B,) → frames (B, T, D) zero beyond each length, lengths (B,)."""
        if features.shape[-1] <= self.window_frames:
            return self._encode_windows(features, lengths)
        windows, window_lengths, owners = [], [], []
        for b, length in enumerate(lengths.tolist()):
            for start in range(0, length, self.window_frames):
                size = min(self.window_frames, length - start)
                windows.append(features[b, :, start : start + self.window_frames])
                window_lengths.append(size)
                owners.append(b)
        width = max(w.shape[-1] for w in windows)
        stacked = torch.stack([nn.functional.pad(w, (0, width - w.shape[-1])) for w in windows])
        frames, frame_lengths = self._encode_windows(stacked, torch.tensor(window_lengths, device=features.device))
        per_clip: list[list[torch.Tensor]] = [[] for _ in range(features.shape[0])]
        for i, b in enumerate(owners):
            per_clip[b].append(frames[i, : frame_lengths[i]])
        joined = [torch.cat(parts) for parts in per_clip]
        out_lengths = torch.tensor([j.shape[0] for j in joined], device=features.device)
        return nn.utils.rnn.pad_sequence(joined, batch_first=True), out_lengths

    def _encode_windows(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row at most one 30 s window: features (N, C, L) → (N, ceil(L/2), D)."""
        enc = self.model
        x = features.to(enc.conv1.weight.dtype)
        valid_in = _mask(lengths, x.shape[-1])[:, None, :]  # (N, 1, L)
        x = nn.functional.gelu(enc.conv1(x * valid_in)) * valid_in  # zero padding, as for a lone clip
        x = nn.functional.gelu(enc.conv2(x)).transpose(1, 2)  # (N, T, D)
        out_lengths = (lengths + 1) // 2
        steps = x.shape[1]
        x = x + enc.embed_positions.weight[:steps]
        valid = _mask(out_lengths, steps)  # (N, T)
        bias = torch.zeros(valid.shape, dtype=x.dtype, device=x.device).masked_fill(~valid, torch.finfo(x.dtype).min)
        attention_mask = bias[:, None, None, :]  # (N, 1, 1, T): padding keys get -inf
        x = nn.functional.dropout(x, p=enc.dropout, training=self.training)
        for layer in enc.layers:
            x = layer(x, attention_mask)
        x = enc.layer_norm(x) * valid[..., None]
        return x, out_lengths

