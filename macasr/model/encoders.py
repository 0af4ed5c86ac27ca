"""Speech encoders: audio → frames (B, T, D) at the encoder's own frame rate.

Symbols: B batch, C feature bins (log-mel), L feature frames, T encoder frames, D encoder width.

Whisper has two encoding policies (`[model.encoder] window`):
- "own" (default) encodes each clip at its own length, not padded to 30 s: transformers'
  `WhisperEncoder` insists on 3,000 mel frames, so we run its convolutions and layers ourselves
  and slice the positional table. Padding is masked at every step (input, after conv1, attention
  keys, output), so a clip's frames do not depend on what it is batched with. 3-20x cheaper for
  short clips than a full window.
- "full" pads each clip's log-mel to the full 30 s window with the value Whisper's feature
  extractor gives digital silence, runs transformers' encoder unchanged (the condition Whisper
  was trained in) and keeps only the clip's own frames, so the LLM sequence is as short as with
  "own". Every row is a whole window and nothing is masked, so batching cannot change a clip.
In both, clips longer than one 30 s window are encoded window by window and the frames joined,
never cut.

HuBERT, WavLM and wav2vec2 (`SSLEncoder`) take the waveform itself as features (C = 1, L samples)
and run their own convolution stack; see `SSLEncoder` for how padding is kept out of each clip.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from macasr.audio import SAMPLE_RATE
from macasr.errors import MacasrError
from macasr.model._hf import loading, locate
from macasr.model.encoder_config import (  # noqa: F401 - the configs live there (no torch) and are importable from here too
    ENCODERS, WAVLM_TARGETS, EncoderConfig, HubertEncoderConfig, SSLEncoderConfig, Wav2Vec2EncoderConfig, WavLMEncoderConfig,
    WhisperEncoderConfig,
)

# What a local encoder folder must hold besides its weights (the file → what it is, for the error).
ENCODER_FILES = {"config.json": "the model's architecture", "preprocessor_config.json": "the feature extractor's settings"}


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
        self.window = torch.hann_window(n_fft)  # made once: a fresh one costs as much as a third of the STFT

    @property
    def num_bins(self) -> int:
        return self.mel_filters.shape[1]

    def num_frames(self, num_samples: int) -> int:
        return max(num_samples, self.n_fft) // self.hop_length

    def __call__(self, waveform: np.ndarray | torch.Tensor) -> torch.Tensor:
        wave = torch.as_tensor(waveform, dtype=torch.float32)
        if wave.numel() < self.n_fft:  # reflect padding needs a few hundred samples
            wave = nn.functional.pad(wave, (0, self.n_fft - wave.numel()))
        stft = torch.stft(wave, self.n_fft, self.hop_length, window=self.window, return_complex=True)[..., :-1]
        # |z|² as re² + im²: no square root (abs), and 6x faster than summing view_as_real's pairs, same bits
        power = stft.real.square() + stft.imag.square()  # (n_fft/2+1, L)
        mel = self.mel_filters.T @ power  # (C, L)
        log_spec = torch.clamp(mel, min=1e-10).log10()
        log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
        return (log_spec + 4.0) / 4.0


def silence_level(features: torch.Tensor) -> torch.Tensor:
    """The log-mel value (scalar) of digital silence after a clip with features (C, L).

    Whisper's feature extractor pads the waveform with zeros to 30 s; a zero frame's log10 power
    (clamped at 1e-10: -10) is raised to the clip's max - 8, then scaled (x + 4) / 4. The clip's
    max log10 power is 4 * features.max() - 4, so silence is max(features.max() - 2, -1.5).
    """
    return torch.clamp(features.max() - 2.0, min=-1.5)


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
        source = locate("model.encoder", cfg.path, ENCODER_FILES)
        with loading("model.encoder", cfg.path, offline=source.offline):
            self.model = HFWhisperEncoder.from_pretrained(
                source.path, dtype=dtype, key_mapping={r"^(model\.)?encoder\.": ""}, attn_implementation="sdpa"
            )
            fe = WhisperFeatureExtractor.from_pretrained(source.path)
        self.featurizer = WhisperFeaturizer(fe.mel_filters, fe.n_fft, fe.hop_length, fe.sampling_rate)
        conv_stride = self.model.conv1.stride[0] * self.model.conv2.stride[0]
        self.window_frames = self.model.config.max_source_positions * conv_stride  # 3000 mel frames = 30 s
        self.output_dim: int = self.model.config.d_model
        self.frame_rate: float = fe.sampling_rate / fe.hop_length / conv_stride  # 50 Hz
        self.window = cfg.window

    def output_lengths(self, feature_lengths: torch.Tensor) -> torch.Tensor:
        """Encoder frames per clip: conv2 halves the mel frames, rounding up, per window."""
        full, rest = feature_lengths // self.window_frames, feature_lengths % self.window_frames
        return full * (self.window_frames // 2) + (rest + 1) // 2

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """features (B, C, L), lengths (B,) → frames (B, T, D) zero beyond each length, lengths (B,)."""
        encode = self._encode_full if self.window == "full" else self._encode_windows
        if features.shape[-1] <= self.window_frames and self.window == "own":
            return encode(features, lengths)
        windows, window_lengths, owners = [], [], []
        for b, length in enumerate(lengths.tolist()):
            pad = float(silence_level(features[b, :, :length])) if self.window == "full" else 0.0
            for start in range(0, length, self.window_frames):
                size = min(self.window_frames, length - start)
                window = features[b, :, start : start + size]
                if self.window == "full":  # Whisper's padded 30 s window: silence after the clip
                    window = nn.functional.pad(window, (0, self.window_frames - size), value=pad)
                windows.append(window)
                window_lengths.append(size)
                owners.append(b)
        width = max(w.shape[-1] for w in windows)
        stacked = torch.stack([nn.functional.pad(w, (0, width - w.shape[-1])) for w in windows])
        frames, frame_lengths = encode(stacked, torch.tensor(window_lengths, device=features.device))
        per_clip: list[list[torch.Tensor]] = [[] for _ in range(features.shape[0])]
        for i, b in enumerate(owners):
            per_clip[b].append(frames[i, : frame_lengths[i]])
        joined = [torch.cat(parts) for parts in per_clip]
        out_lengths = torch.tensor([j.shape[0] for j in joined], device=features.device)
        return nn.utils.rnn.pad_sequence(joined, batch_first=True), out_lengths

    def _encode_full(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Whole padded windows (N, C, window_frames) through transformers' encoder as is →
        each row's own frames (N, T, D), zero beyond (lengths + 1) // 2."""
        x = self.model(features.to(self.model.conv1.weight.dtype)).last_hidden_state  # (N, window_frames / 2, D)
        out_lengths = (lengths + 1) // 2
        steps = int(out_lengths.max())
        return x[:, :steps] * _mask(out_lengths, steps)[..., None], out_lengths

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



# ----------------------------------------------------------------------------- HuBERT, WavLM, wav2vec2

class WaveformFeaturizer:
    """Waveform (16 kHz mono float32) → the samples as features (1, L), as the checkpoint wants them.

    With `do_normalize` each clip gets zero mean and unit variance, like transformers'
    `Wav2Vec2FeatureExtractor` on an unpadded clip. Clips shorter than the convolution stack's
    receptive field are padded with zeros to it, so every clip yields at least one frame.
    """

    def __init__(self, do_normalize: bool, min_samples: int) -> None:
        self.do_normalize = do_normalize
        self.min_samples = min_samples

    def __call__(self, waveform: np.ndarray | torch.Tensor) -> torch.Tensor:
        wave = torch.as_tensor(waveform, dtype=torch.float32).flatten()
        if self.do_normalize and wave.numel() > 0:
            wave = (wave - wave.mean()) / torch.sqrt(wave.var(correction=0) + 1e-7)
        if wave.numel() < self.min_samples:
            wave = nn.functional.pad(wave, (0, self.min_samples - wave.numel()))
        return wave[None]  # (1, L)


def conv_output_lengths(lengths: torch.Tensor, kernels: tuple[int, ...], strides: tuple[int, ...]) -> torch.Tensor:
    """Frames left after a stack of unpadded 1-D convolutions: floor((L - k) / s) + 1 per layer."""
    for kernel, stride in zip(kernels, strides):
        lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
    return lengths


def receptive_field(kernels: tuple[int, ...], strides: tuple[int, ...]) -> int:
    """Samples one output frame sees (400 = 25 ms for the usual wav2vec2 stack)."""
    return 1 + sum((k - 1) * math.prod(strides[:i]) for i, k in enumerate(kernels))


class SSLEncoder(nn.Module):
    """A self-supervised speech model with a wav2vec2-style convolution stack over the waveform.

    Loaded through `AutoModel`; frame rate and frame counts come from the checkpoint's
    `conv_stride` and `conv_kernel` (50 Hz for the released models). A clip's frames do not
    depend on its batch, for both kinds of convolution stack:
    - `feat_extract_norm = "layer"` (large models) normalises each frame on its own, so the
      padded batch goes through the stack at once;
    - `feat_extract_norm = "group"` (base models) normalises each channel over the whole input,
      padding included, so each clip goes through the stack alone, unpadded (the stack is cheap;
      the transformer still runs batched).
    The transformer gets an attention mask; padded frames enter it as zeros and leave it zeroed.
    With `layer = k` the output is transformers' `hidden_states[k]`: layers above k are dropped
    (never run) and, in pre-norm models, so is the final norm that belongs to the last layer.
    When the encoder trains (train = true or LoRA) the checkpoint's own time masking
    (`mask_time_prob`) and LayerDrop apply, as in transformers.
    """

    model_type = ""  # transformers' config.model_type of the family; a subclass sets it
    inert_lora_targets: frozenset[str] = frozenset()  # layers whose forward the model never calls

    def __init__(self, cfg: SSLEncoderConfig, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoFeatureExtractor, AutoModel

        source = locate("model.encoder", cfg.path, ENCODER_FILES)
        with loading("model.encoder", cfg.path, offline=source.offline):
            config = AutoConfig.from_pretrained(source.path)
            self._check(cfg, config)
            self.model = AutoModel.from_pretrained(source.path, config=config, dtype=dtype)
            fe = AutoFeatureExtractor.from_pretrained(source.path)
        if fe.sampling_rate != SAMPLE_RATE:
            raise MacasrError(f"[model.encoder] path: {cfg.path!r} expects {fe.sampling_rate} Hz audio; macasr feeds {SAMPLE_RATE} Hz")
        if cfg.layer:
            encoder = self.model.encoder
            encoder.layers = encoder.layers[: cfg.layer]
            if config.do_stable_layer_norm:  # pre-norm: the final norm belongs to the last layer's output
                encoder.layer_norm = nn.Identity()
            self.model.config.num_hidden_layers = cfg.layer
        self.kernels, self.strides = tuple(config.conv_kernel), tuple(config.conv_stride)
        self.per_clip = config.feat_extract_norm == "group"
        self.featurizer = WaveformFeaturizer(fe.do_normalize, receptive_field(self.kernels, self.strides))
        self.output_dim: int = config.hidden_size
        self.frame_rate: float = fe.sampling_rate / math.prod(self.strides)

    def _check(self, cfg: SSLEncoderConfig, config) -> None:
        """Refuse checkpoints this class would encode wrongly, naming the key to change."""
        if config.model_type != self.model_type:
            hint = f'set name = "{config.model_type}"' if config.model_type in ENCODERS.names() else "pick a matching encoder"
            raise MacasrError(f"[model.encoder] name: {cfg.path!r} is a {config.model_type} checkpoint, not {self.model_type}; {hint}")
        if getattr(config, "add_adapter", False):
            raise MacasrError(f"[model.encoder] path: {cfg.path!r} has a convolutional adapter (add_adapter), which is not supported")
        inert = sorted(self.inert_lora_targets.intersection(cfg.lora.target_modules)) if cfg.lora.enabled else []
        if inert:
            raise MacasrError(f"[model.encoder.lora] target_modules: {self.model_type} never calls {', '.join(inert)} (its attention "
                              f"reads their weights directly), so adapters there would not train; use e.g. {', '.join(WAVLM_TARGETS)}")
        if cfg.layer > config.num_hidden_layers:
            raise MacasrError(f"[model.encoder] layer: {cfg.path!r} has {config.num_hidden_layers} layers, got layer = {cfg.layer}")

    def output_lengths(self, feature_lengths: torch.Tensor) -> torch.Tensor:
        """Frames per clip from its sample count (the convolutions are unpadded)."""
        return conv_output_lengths(feature_lengths, self.kernels, self.strides)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """features (B, 1, L) waveforms, lengths (B,) samples → frames (B, T, D) zero beyond each length, lengths (B,)."""
        model = self.model
        wave = features[:, 0].to(model.dtype)  # (B, L)
        out_lengths = self.output_lengths(lengths)
        if self.per_clip:
            clips = [model.feature_extractor(wave[b : b + 1, :n])[0].T for b, n in enumerate(lengths.tolist())]
            extracted = nn.utils.rnn.pad_sequence(clips, batch_first=True)  # (B, T, C)
        else:
            extracted = model.feature_extractor(wave).transpose(1, 2)  # (B, T, C)
        valid = _mask(out_lengths, extracted.shape[1])  # (B, T)
        hidden = model.feature_projection(extracted)
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden  # wav2vec2 and WavLM also return the normed input
        if self.training and hidden.shape[1] >= model.config.mask_time_length:  # shorter batches cannot hold a span
            hidden = model._mask_hidden_states(hidden, attention_mask=valid)
        hidden = model.encoder(hidden, attention_mask=valid).last_hidden_state
        return hidden * valid[..., None], out_lengths


@ENCODERS.register("hubert", HubertEncoderConfig)
class HubertEncoder(SSLEncoder):
    """HuBERT (facebook/hubert-*), e.g. the LibriSpeech fine-tuned hubert-large-ls960-ft."""

    model_type = "hubert"


@ENCODERS.register("wavlm", WavLMEncoderConfig)
class WavLMEncoder(SSLEncoder):
    """WavLM (microsoft/wavlm-*): HuBERT-style training with gated relative position bias."""

    model_type = "wavlm"
    inert_lora_targets = frozenset({"q_proj", "k_proj", "v_proj", "out_proj"})


@ENCODERS.register("wav2vec2", Wav2Vec2EncoderConfig)
class Wav2Vec2Encoder(SSLEncoder):
    """wav2vec 2.0 (facebook/wav2vec2-*), pretrained or CTC fine-tuned (the CTC head is not loaded)."""

    model_type = "wav2vec2"
