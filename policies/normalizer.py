"""Running mean / variance of observations, kept as buffers so they travel with the model."""

from collections.abc import Callable

import torch
from torch import nn

# (count, mean (dim,), population var (dim,)) of one batch -> the same of every rank's batch together
MomentReduce = Callable[[int, torch.Tensor, torch.Tensor], tuple[int, torch.Tensor, torch.Tensor]]


class EmpiricalNormalizer(nn.Module):
    """Normalizes (B, dim) inputs with statistics of every batch it has been updated with.

    The variance is the population variance (divide by count) of all samples seen, merged batch by
    batch with Chan et al.'s parallel formula, so it equals the statistics of the concatenated data.
    ``until`` stops updating once ``count`` has reached it; eval mode never updates.

    ``reduce_moments``, when set, maps this batch's ``(count, mean, var)`` to those of the batch of
    every data-parallel rank (count-weighted), so all ranks keep the same statistics; it is passed in
    by the trainer (embodied/distributed.py), and None leaves the statistics local.
    """

    # Real (not postponed) annotations: TorchScript reads them when the module is scripted for export.
    mean: torch.Tensor
    var: torch.Tensor
    std: torch.Tensor
    count: torch.Tensor

    def __init__(self, dim: int, eps: float = 1e-2, until: int | None = None):
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.until = until
        self.reduce_moments: MomentReduce | None = None
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("var", torch.ones(dim))
        self.register_buffer("std", torch.ones(dim))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, dim) -> (x - mean) / (std + eps), same shape."""
        return (x - self.mean) / (self.std + self.eps)

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Merge the statistics of x: (B, dim) into the running ones (training mode, below ``until``)."""
        if not self.training or (self.until is not None and int(self.count) >= self.until):
            return
        n_b = x.shape[0]
        x = x.to(self.mean.dtype)
        if self.reduce_moments is None:
            if n_b == 0:
                return
            mean_b, var_b = x.mean(dim=0), x.var(dim=0, correction=0)
        else:
            # Every rank takes part in the reduction, even one with an empty batch.
            zero = torch.zeros_like(self.mean)
            local = (x.mean(dim=0), x.var(dim=0, correction=0)) if n_b else (zero, zero)
            n_b, mean_b, var_b = self.reduce_moments(n_b, *local)
            if n_b == 0:
                return
        n_a = self.count.to(self.mean.dtype)
        n = n_a + n_b
        delta = mean_b - self.mean
        m2 = self.var * n_a + var_b * n_b + delta.square() * (n_a * n_b / n)
        # In-place copies keep the buffers ordinary tensors whatever grad mode the caller is in.
        self.mean.add_(delta * (n_b / n))
        self.var.copy_(m2 / n)
        self.std.copy_(self.var.sqrt())
        self.count.add_(n_b)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, eps={self.eps}, until={self.until}"
