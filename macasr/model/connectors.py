"""Connectors: encoder frames → speech embeddings in the LLM's input space.

Symbols: B batch, T encoder frames, k downsampling factor, T' = ceil(T/k) downsampled frames,
D encoder width, E a connector's inner width (`dim`), W window (downsampled frames), Q queries
per window, N speech embeddings, H LLM hidden width.

Every connector first downsamples k-fold, which cuts the LLM's sequence length, then `project`s
to H. The base class owns the downsampler that `downsampler` names (`stack`, `conv1d` or a
plugin's; macasr.model.downsamplers), built from k and D. Frames beyond a clip's length are zeroed before downsampling (encoders already guarantee it),
attention never looks past a clip's length, and embeddings beyond a clip's output length are
zero, so a clip's embeddings are the same alone and in a batch.
"""

from __future__ import annotations

import torch
from torch import nn

from macasr.errors import ConfigError
from macasr.model.connector_config import (  # noqa: F401 - the configs live there (no torch) and are importable from here too
    CONNECTORS, DOWNSAMPLERS, ConnectorConfig, LinearConnectorConfig, MLPConnectorConfig, QFormerConnectorConfig,
    TransformerConnectorConfig,
)
from macasr.model.downsamplers import ceil_div

QFORMER_FFN_MULTIPLIER = 4  # feed-forward width / dim, as in BLIP-2's BERT-based Q-Former
INIT_STD = 0.02  # learned queries and window positions, as in BERT


def _valid(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """(B, width) bool, True at positions before each row's length."""
    return torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]


def zero_beyond(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Zero (B, L, ·) beyond each row's length."""
    return x.masked_fill(~_valid(lengths, x.shape[1])[..., None], 0)


def key_padding(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """(B, width) mask for attention, True = ignore. A row with no valid key (only padding
    windows have none) may attend to all, so its softmax stays finite; its output is discarded."""
    return ~_valid(lengths, width) & (lengths > 0)[:, None]


class Connector(nn.Module):
    """Base: downsample (B, T, D) → (B, T', input_dim), then `project` → (B, N, H).

    A subclass implements `project`, and `output_lengths` when N is not T' (the downsampler's
    `output_lengths`, ceil(T/k) for the built-in ones).
    """

    def __init__(self, cfg: ConnectorConfig, input_dim: int, output_dim: int) -> None:
        super().__init__()
        self.k = cfg.downsample
        self.output_dim = output_dim
        self.downsampler = DOWNSAMPLERS.component(cfg.downsampler)(self.k, input_dim)
        self.input_dim = self.downsampler.output_dim  # what `project` receives

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return self.downsampler.output_lengths(lengths)

    def downsample(self, frames: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, D) → (B, T', input_dim) and T' per clip; frames past a clip's length are ignored."""
        x, short = self.downsampler(zero_beyond(frames, lengths), lengths)
        return zero_beyond(x, short), short

    def project(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, T', input_dim) with T' valid frames per clip → (B, N, H)."""
        raise NotImplementedError

    def forward(self, frames: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, short = self.downsample(frames, lengths)
        out_lengths = self.output_lengths(lengths)
        return zero_beyond(self.project(x, short), out_lengths), out_lengths


@CONNECTORS.register("linear", LinearConnectorConfig)
class LinearConnector(Connector):
    """One linear layer: the smallest connector, a useful baseline. Output length: ceil(T / k)."""

    def __init__(self, cfg: LinearConnectorConfig, input_dim: int, output_dim: int) -> None:
        super().__init__(cfg, input_dim, output_dim)
        self.proj = nn.Linear(self.input_dim, output_dim)

    def project(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


@CONNECTORS.register("mlp", MLPConnectorConfig)
class MLPConnector(Connector):
    """Linear → GELU → Linear, the connector most speech-LLM recipes use. Output length: ceil(T / k)."""

    def __init__(self, cfg: MLPConnectorConfig, input_dim: int, output_dim: int) -> None:
        super().__init__(cfg, input_dim, output_dim)
        hidden = cfg.hidden_dim or output_dim
        self.net = nn.Sequential(
            nn.Linear(self.input_dim, hidden), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(hidden, output_dim)
        )

    def project(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _width(cfg: TransformerConnectorConfig | QFormerConnectorConfig, output_dim: int) -> int:
    """`dim`, where 0 means the LLM's width, which only the built model knows."""
    dim = cfg.dim or output_dim
    if dim % cfg.heads:
        raise ConfigError(f"[model.connector] heads: must divide dim, the LLM's width {dim} when dim = 0, got {cfg.heads}")
    return dim


class AttentionBlock(nn.Module):
    """Pre-norm transformer layer: self-attention, optional cross-attention to `memory`, feed-forward."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float, cross: bool = False) -> None:
        super().__init__()
        self.self_norm = nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.cross_norm = nn.LayerNorm(dim) if cross else None
        self.cross_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True) if cross else None
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn_dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, padding: torch.Tensor | None = None, memory: torch.Tensor | None = None,
        memory_padding: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, L, E) → (B, L, E); `padding`/`memory_padding` (B, L)/(B, S) are True on keys to ignore."""
        h = self.self_norm(x)
        x = x + self.drop(self.self_attn(h, h, h, key_padding_mask=padding, need_weights=False)[0])
        if self.cross_attn is not None:
            h = self.cross_norm(x)
            x = x + self.drop(self.cross_attn(h, memory, memory, key_padding_mask=memory_padding, need_weights=False)[0])
        return x + self.drop(self.ffn(self.ffn_norm(x)))


@CONNECTORS.register("transformer", TransformerConnectorConfig)
class TransformerConnector(Connector):
    """Downsample → Linear to E → pre-norm self-attention layers → LayerNorm → Linear to H.

    Each frame attends only to its own clip's frames (a key-padding mask from the lengths). No
    position embedding is added: Whisper's frames already carry its positional encoding.
    Output length for input length T: ceil(T / k).
    """

    def __init__(self, cfg: TransformerConnectorConfig, input_dim: int, output_dim: int) -> None:
        super().__init__(cfg, input_dim, output_dim)
        dim = _width(cfg, output_dim)
        self.inp = nn.Linear(self.input_dim, dim)
        self.layers = nn.ModuleList(
            AttentionBlock(dim, cfg.heads, dim * cfg.ffn_multiplier, cfg.dropout) for _ in range(cfg.layers)
        )
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, output_dim)

    def project(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = self.inp(x)  # (B, T', E)
        padding = key_padding(lengths, x.shape[1])
        for layer in self.layers:
            x = layer(x, padding)
        return self.out(self.norm(x))


@CONNECTORS.register("qformer", QFormerConnectorConfig)
class QFormerConnector(Connector):
    """Window-level Q-Former (BLIP-2's Q-Former applied window by window, as in SALMONN).

    Downsample → Linear to E; the frames are cut into windows of W; in each window Q learned
    queries self-attend and cross-attend to the window's frames (plus a learned position within
    the window), and a Linear maps them to H. The number of speech embeddings grows with the
    audio: output length for input length T is ceil(ceil(T / k) / W) · Q. A clip's partial last
    window attends only to its valid frames.
    """

    def __init__(self, cfg: QFormerConnectorConfig, input_dim: int, output_dim: int) -> None:
        super().__init__(cfg, input_dim, output_dim)
        dim = _width(cfg, output_dim)
        self.window, self.num_queries = cfg.window, cfg.num_queries
        self.inp = nn.Linear(self.input_dim, dim)
        self.frame_norm = nn.LayerNorm(dim)
        self.position = nn.Parameter(torch.randn(cfg.window, dim) * INIT_STD)  # (W, E)
        self.queries = nn.Parameter(torch.randn(cfg.num_queries, dim) * INIT_STD)  # (Q, E)
        self.layers = nn.ModuleList(
            AttentionBlock(dim, cfg.heads, dim * QFORMER_FFN_MULTIPLIER, cfg.dropout, cross=True) for _ in range(cfg.layers)
        )
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, output_dim)

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return ceil_div(super().output_lengths(lengths), self.window) * self.num_queries

    def project(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        batch, steps, _ = x.shape
        windows = ceil_div(steps, self.window)
        x = nn.functional.pad(self.inp(x), (0, 0, 0, windows * self.window - steps))
        frames = self.frame_norm(x.reshape(batch * windows, self.window, -1)) + self.position  # (B*nW, W, E)
        starts = torch.arange(windows, device=x.device) * self.window
        valid = (lengths[:, None] - starts[None, :]).clamp(0, self.window).reshape(-1)  # (B*nW,) frames per window
        padding = key_padding(valid, self.window)
        queries = self.queries.expand(batch * windows, -1, -1)  # (B*nW, Q, E)
        for layer in self.layers:
            queries = layer(queries, memory=frames, memory_padding=padding)
        return self.out(self.norm(queries)).reshape(batch, windows * self.num_queries, -1)  # (B, nW*Q, H)
