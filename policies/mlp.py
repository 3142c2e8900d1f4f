"""A plain multilayer perceptron, the body of every actor and critic."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

from torch import nn

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "elu": nn.ELU,
    "selu": nn.SELU,
    "relu": nn.ReLU,
    "lrelu": nn.LeakyReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}


def make_activation(name: str) -> nn.Module:
    """Activation module by lower-case name; unknown names raise ValueError listing the valid ones."""
    try:
        return _ACTIVATIONS[name.lower()]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; valid: {', '.join(sorted(_ACTIVATIONS))}") from None


class MLP(nn.Sequential):
    """Linear layers with an activation between them and none after the last: (B, in_dim) -> (B, out_dim).

    A Sequential so parameters are named ``0.weight``, ``2.bias``, ... in state dicts and exports.
    """

    def __init__(self, in_dim: int, hidden_dims: Sequence[int], out_dim: int, activation: str = "elu"):
        make_activation(activation)  # fail before building anything
        dims = [in_dim, *hidden_dims]
        layers: list[nn.Module] = []
        for d_in, d_out in pairwise(dims):
            layers += [nn.Linear(d_in, d_out), make_activation(activation)]
        layers.append(nn.Linear(dims[-1], out_dim))
        super().__init__(*layers)
        self.in_dim = in_dim
        self.out_dim = out_dim
