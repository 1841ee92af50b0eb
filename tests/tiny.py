"""Tiny models shared by the inference tests."""

import torch

from autodeeplab.genotype import RELEASED, Genotype
from autodeeplab.network import AutoDeepLab

TINY_PATH = (0, 1)  # deepest stride 8: inputs of 9 px and more go through


def make_tiny_model(num_classes: int = 3, seed: int = 0) -> AutoDeepLab:
    """A few-channel two-cell network with non-trivial batch-norm statistics, in eval mode."""
    torch.manual_seed(seed)
    model = AutoDeepLab(
        Genotype(cell=RELEASED.cell, path=TINY_PATH),
        num_classes=num_classes,
        filter_multiplier=2,
        aspp_channels=8,
        decoder_channels=8,
        low_level_reduced=4,
    )
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    return model.eval()
