"""Fold frozen BatchNorm layers into the convolutions before them.

In eval mode a BatchNorm is a fixed per-channel affine map, so ``bn(conv(x))`` equals one
convolution with rescaled weights and a bias. Folding takes the BatchNorm layers out of every
forward and backward pass of an attack step and changes no output beyond float rounding.
"""
import torch
from torch import nn


@torch.no_grad()
def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    conv.weight.mul_(scale.view(-1, 1, 1, 1))
    bias = bn.bias - bn.running_mean * scale
    if conv.bias is None:
        conv.bias = nn.Parameter(bias.clone(), requires_grad=conv.weight.requires_grad)
    else:
        conv.bias.mul_(scale).add_(bias)


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Fold every BatchNorm2d registered right after a Conv2d (the layout of EfficientNet and
    torchvision ResNets, where that conv feeds that BN) into it; the BN becomes an Identity."""
    for parent in module.modules():
        children = list(parent.named_children())
        for (_, conv), (bn_name, bn) in zip(children, children[1:]):
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                _fold(conv, bn)
                setattr(parent, bn_name, nn.Identity())
    return module
