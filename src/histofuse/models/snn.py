"""Self-normalising network for tabular (genomic) features (Klambauer et al., 2017)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

__all__ = ["SelfNormalizingNetwork"]


class SelfNormalizingNetwork(nn.Module):
    """Blocks of Linear + SELU + AlphaDropout.

    Weights use LeCun-normal initialisation (``N(0, 1/fan_in)``) and zero biases, which keeps
    activations near zero mean and unit variance through the SELU layers.
    """

    def __init__(
        self, *, in_dim: int, hidden_dims: Sequence[int] = (128, 128), dropout: float = 0.25
    ) -> None:
        super().__init__()
        if in_dim < 1:
            raise ValueError(f"in_dim must be >= 1, got {in_dim}")
        if not hidden_dims or any(width < 1 for width in hidden_dims):
            raise ValueError(f"hidden_dims must be positive widths, got {list(hidden_dims)}")
        layers: list[nn.Module] = []
        width_in = in_dim
        for width in hidden_dims:
            linear = nn.Linear(width_in, width)
            nn.init.normal_(linear.weight, mean=0.0, std=1.0 / math.sqrt(width_in))
            nn.init.zeros_(linear.bias)
            layers += [linear, nn.SELU(), nn.AlphaDropout(dropout)]
            width_in = width
        self.network = nn.Sequential(*layers)
        self.in_dim = in_dim
        self.out_dim = width_in

    def forward(self, x: Tensor) -> Tensor:
        """Map ``(B, in_dim)`` features to ``(B, out_dim)``."""
        return self.network(x)
