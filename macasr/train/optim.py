"""Optimizers: AdamW, or Muon for the 2-D weight matrices with AdamW for the rest.

Muon (Jordan et al. 2024, "Muon: An optimizer for hidden layers in neural networks",
https://kellerjordan.github.io/posts/muon/) replaces each 2-D weight's momentum update by its
nearest semi-orthogonal matrix (Newton-Schulz iterations), which evens out the step across
directions; the installed torch ships it as `torch.optim.Muon`. It is meant for hidden-layer
matrices only: token embeddings and the output head (looked up or read out per token, not
mixed), biases and norm gains (1-D), and convolution kernels (3-D) keep AdamW, each group with
its own learning rate (`[train] lr` for AdamW, `[train] muon_lr` for Muon). Both follow the same
warmup + cosine schedule: it scales every group's rate by the same factor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

# Names of 2-D weights that are per-token tables rather than hidden-layer maps (Muon's authors
# keep them on AdamW): input embeddings and the output head of the LLM.
_TOKEN_TABLES = ("embed_tokens", "lm_head", "wte", "embed_positions", "wpe")


def is_muon_weight(name: str, param: torch.Tensor) -> bool:
    """Whether Muon updates `param`: a 2-D matrix that is not a token or position table."""
    return param.ndim == 2 and not any(part in name for part in _TOKEN_TABLES)


def adamw(params: list[torch.Tensor], lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW; weight decay only on matrices and kernels (ndim ≥ 2), not on biases and norm gains."""
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": group, "weight_decay": wd} for group, wd in ((decay, weight_decay), (no_decay, 0.0)) if group]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), fused=torch.cuda.is_available() or None)


class MuonWithAdamW(torch.optim.Optimizer):
    """`torch.optim.Muon` over `muon_params` and AdamW over `adamw_params`, stepped together.

    One object so the engine, the lr scheduler and checkpoints see a single optimizer:
    `param_groups` are both optimizers' own group dicts (a scheduler's change of "lr" reaches
    them), `state_dict()` is {"muon": ..., "adamw": ...}.
    """

    def __init__(self, muon_params: list[torch.Tensor], adamw_params: list[torch.Tensor], *, muon_lr: float, lr: float,
                 weight_decay: float) -> None:
        # "original" scales each matrix's step by sqrt(max(1, rows/cols)) (Keller Jordan's
        # implementation), for which muon_lr ≈ 0.02 is the published starting point.
        self.parts: dict[str, torch.optim.Optimizer] = {
            "muon": torch.optim.Muon(muon_params, lr=muon_lr, weight_decay=weight_decay, adjust_lr_fn="original"),
        }
        if adamw_params:  # a connector of bias-free linears has nothing else
            self.parts["adamw"] = adamw(adamw_params, lr, weight_decay)
        # Optimizer.__init__ would build new group dicts; sharing the parts' own keeps one truth.
        self.defaults = {"lr": lr}
        self.state = self.parts["muon"].state  # for code that only reads `state`; each part keeps its own
        self.param_groups = [group for part in self.parts.values() for group in part.param_groups]
        self._optimizer_step_pre_hooks: dict[int, Callable[..., Any]] = {}
        self._optimizer_step_post_hooks: dict[int, Callable[..., Any]] = {}

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> None:  # type: ignore[override]
        if closure is not None:
            raise ValueError("MuonWithAdamW does not take a closure")
        for part in self.parts.values():
            part.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts.values():
            part.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        return {name: part.state_dict() for name, part in self.parts.items()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        """ValueError when `state_dict` was not written by a MuonWithAdamW (an AdamW run's, say)."""
        if not isinstance(state_dict, dict) or set(state_dict) != set(self.parts):
            raise ValueError(f"the optimizer state holds {sorted(state_dict) if isinstance(state_dict, dict) else '?'}, "
                             f"not {sorted(self.parts)} ([train] optimizer differs from the saved run's)")
        for name, part in self.parts.items():
            part.load_state_dict(state_dict[name])


def build_optimizer(model: torch.nn.Module, name: str, lr: float, weight_decay: float,
                    muon_lr: float = 0.02) -> torch.optim.Optimizer:
    """The optimizer `[train] optimizer` names, over the trainable parameters of `model` only.

    "adamw": AdamW at `lr` for all. "muon": Muon at `muon_lr` for hidden-layer matrices
    (`is_muon_weight`), AdamW at `lr` for the rest; plain AdamW when no matrix qualifies.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if name == "adamw":
        return adamw([p for _, p in named], lr, weight_decay)
    if name != "muon":
        raise ValueError(f"unknown optimizer {name!r}; expected adamw or muon")
    matrices = [p for n, p in named if is_muon_weight(n, p)]
    rest = [p for n, p in named if not is_muon_weight(n, p)]
    if not matrices:
        return adamw(rest, lr, weight_decay)
    return MuonWithAdamW(matrices, rest, muon_lr=muon_lr, lr=lr, weight_decay=weight_decay)


def learning_rates(optimizer: torch.optim.Optimizer) -> tuple[float, float | None]:
    """(the current `[train] lr` rate, Muon's rate or None): what metrics.jsonl logs as lr and muon_lr."""
    if isinstance(optimizer, MuonWithAdamW):
        muon = optimizer.parts["muon"].param_groups[0]["lr"]
        adamw = optimizer.parts.get("adamw")
        return (adamw.param_groups[0]["lr"] if adamw else muon), muon
    return optimizer.param_groups[0]["lr"], None
