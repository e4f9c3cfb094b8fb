"""How a model's normalisation layers scale their input: read from the module, checked against it."""

from __future__ import annotations

import torch
from torch import nn


class ElementwiseNorm:
    """A LayerNorm / RMSNorm seen as ``y = center(x) / s(x) * gain + bias`` with ``s`` read from the data.

    Freezing ``s`` at its value in a run makes the norm affine in its input: that is what lets direct
    logit attribution split the final residual into components whose contributions add up exactly.
    """

    def __init__(self, module: nn.Module):
        self.module = module
        name = type(module).__name__
        self.center = isinstance(module, nn.LayerNorm)
        eps = getattr(module, "variance_epsilon", None)
        if eps is None:
            eps = getattr(module, "eps", None)
        weight = getattr(module, "weight", None)
        if eps is None or weight is None:
            raise TypeError(
                f"cannot read the norm {name}: expected a LayerNorm or an RMSNorm with `weight` and "
                "`eps`/`variance_epsilon`; direct attribution needs its per-token scale"
            )
        self.eps = float(eps)
        # Gemma's RMSNorm multiplies by (1 + weight)
        self.gain = (1.0 + weight.float()) if "Gemma" in name else weight.float()
        bias = getattr(module, "bias", None)
        self.bias = bias.float() if isinstance(bias, torch.Tensor) else None
        self.name = name

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., 1]`` the per-token divisor ``s(x)``."""
        x = x.float()
        if self.center:
            x = x - x.mean(-1, keepdim=True)
        return torch.sqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)

    def readout(self, direction: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """The vector ``r`` with ``frozen_norm(c) . direction == c . r`` for any component ``c``.

        direction: ``[..., d]``; scale: ``[..., 1]``. LayerNorm's centring is symmetric, so it moves
        onto the readout vector.
        """
        r = self.gain * direction.float() / scale
        return r - r.mean(-1, keepdim=True) if self.center else r

    def frozen(self, part: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """What the norm, its scale frozen at ``scale`` ``[..., 1]``, makes of one additive part of its
        input (the bias excluded): the parts' images sum to the norm's output minus its bias."""
        part = part.float()
        if self.center:
            part = part - part.mean(-1, keepdim=True)
        return part * self.gain.detach().to(part.device) / scale

    def check(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """The max error of this reading against the module's output ``y`` for input ``x``; raises if
        it does not reproduce it."""
        xc = x.float() - x.float().mean(-1, keepdim=True) if self.center else x.float()
        mine = xc / self.scale(x) * self.gain + (self.bias if self.bias is not None else 0)
        err = (mine - y.float()).abs().max().item()
        if err > 1e-3 * max(y.float().abs().max().item(), 1.0):
            raise ValueError(
                f"the norm {self.name} does not behave like a LayerNorm/RMSNorm (max error {err:.3g}); "
                "direct attribution cannot freeze its scale"
            )
        return err
