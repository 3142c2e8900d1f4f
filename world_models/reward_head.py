"""A reward and cost regressor of a transition (state, action, next state), fitted by plain MSE.

The ensemble's own reward head is fitted by Gaussian NLL beside every state column: where the
reward is a sharp function of the state (a reach task's kernel around the goal), its learned
variance absorbs the error and the mean stays flat. Planners can score predicted transitions with
this head instead: the next state comes from the ensemble, the reward from a squared-error fit of
what the env paid for that transition. Inputs and targets are normalized by buffers (saved with it).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class RewardHead(nn.Module):
    """MLP (state, action, next state) -> (reward, cost); shapes (..., S), (..., A), (..., S) -> (...)."""

    def __init__(self, state_dim: int, action_dim: int, hidden: Sequence[int] = (128, 128)) -> None:
        super().__init__()
        in_dim = 2 * state_dim + action_dim
        layers: list[nn.Module] = []
        for h in hidden:
            layers += [nn.Linear(in_dim, int(h)), nn.SiLU()]
            in_dim = int(h)
        layers.append(nn.Linear(in_dim, 2))
        self.net = nn.Sequential(*layers)
        self.register_buffer("in_mean", torch.zeros(2 * state_dim + action_dim))
        self.register_buffer("in_std", torch.ones(2 * state_dim + action_dim))
        self.register_buffer("out_mean", torch.zeros(2))
        self.register_buffer("out_std", torch.ones(2))

    def _inputs(self, state: torch.Tensor, action: torch.Tensor, next_state: torch.Tensor) -> torch.Tensor:
        return (torch.cat([state, action, next_state], -1) - self.in_mean) / self.in_std

    def forward(
        self, state: torch.Tensor, action: torch.Tensor, next_state: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(self._inputs(state, action, next_state)) * self.out_std + self.out_mean
        return out[..., 0], out[..., 1]


def fit_reward_head(
    head: RewardHead,
    state: torch.Tensor,
    action: torch.Tensor,
    next_state: torch.Tensor,
    reward: torch.Tensor,
    cost: torch.Tensor,
    *,
    updates: int = 1000,
    batch_size: int = 512,
    lr: float = 1e-3,
    generator: torch.Generator | None = None,
) -> float:
    """Fit ``head`` in place on (B, ...) transitions by MSE of normalized targets; returns the last
    minibatch loss. Normalization is refreshed from this data (warm-started weights are kept)."""
    x = torch.cat([state, action, next_state], -1)
    y = torch.stack([reward, cost], -1)
    with torch.no_grad():
        head.in_mean.copy_(x.mean(0))
        head.in_std.copy_(x.std(0).clamp_min(1e-6))
        head.out_mean.copy_(y.mean(0))
        head.out_std.copy_(y.std(0).clamp_min(1e-6))
    xn, yn = (x - head.in_mean) / head.in_std, (y - head.out_mean) / head.out_std
    opt = torch.optim.Adam(head.net.parameters(), lr=lr)
    head.train()
    loss = torch.zeros(())
    for _ in range(updates):
        idx = torch.randint(x.shape[0], (min(batch_size, x.shape[0]),), generator=generator).to(x.device)
        loss = F.mse_loss(head.net(xn[idx]), yn[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    head.eval()
    return float(loss.detach())
