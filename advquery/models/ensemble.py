"""Several descriptor models as one, so an attack can aim at all of them at once (transfer)."""
from collections.abc import Sequence

import torch
from torch import nn

from .descriptor import DescriptorModel


class ModelEnsemble(nn.Module):
    """Concatenated unit descriptors of several models, scaled to unit norm.

    For descriptors built this way ``||f(a) - f(b)||^2`` is the mean of the members' squared
    distances and the cosine similarity the mean of their similarities, so an attack on the
    ensemble pushes every member away at once. Meant for attacks, not for indexing.
    """

    def __init__(self, models: Sequence[DescriptorModel]):
        super().__init__()
        if len(models) < 2:
            raise ValueError(f"an ensemble needs at least two models, got {len(models)}")
        devices = {m.device for m in models}
        if len(devices) > 1:
            raise ValueError(f"ensemble members must share one device, got {sorted(map(str, devices))}")
        self.members = nn.ModuleList(models)
        self.name = "+".join(m.name for m in models)

    @property
    def device(self) -> torch.device:
        return self.members[0].device

    def forward(self, x: torch.Tensor, scales: Sequence[float] = (1.0,)) -> torch.Tensor:
        return self.combine([m(x, scales=scales) for m in self.members])

    @staticmethod
    def combine(descriptors: Sequence[torch.Tensor]) -> torch.Tensor:
        """The ensemble's descriptor (N, D) from its members' (N, D_i), in the members' order."""
        return torch.cat(list(descriptors), dim=1) / len(descriptors) ** 0.5
