"""The paper's conditional GAN (sections 3.3-3.4): an MLP generator and a conditional PatchGAN critic.

Images are stored in [0, 1] (shards); the generator ends in Tanh, so training maps targets to
[-1, 1] with ``to_tanh`` and predictions back with ``from_tanh`` before any metric.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from meg2fmri.shards.errors import InputError


def to_tanh(image: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1]."""
    return image * 2 - 1


def from_tanh(image: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1]."""
    return (image + 1) / 2


class Generator(nn.Module):
    """MEG vector ``(B, width)`` -> image ``(B, 1, S, S)`` in [-1, 1]: three linear layers, ReLU, Tanh.

    Hidden sizes follow the paper's code (328 -> 512 -> 1024 -> S*S). Dropout after each hidden
    layer is pix2pix's (its generator's only noise source); ``start_from`` sets the output layer so
    that the untrained generator draws the mean training image, and training learns the departures
    from it that the MEG explains (held-out subjects share no anatomy with the training ones).
    ``smooth`` > 0 (px) filters that departure with a fixed Gaussian, in training and use: a prior of
    fMRI analysis the paper does not use (BOLD changes are spatially smooth, pixel noise is not)."""

    def __init__(self, width: int, size: int, hidden: tuple[int, int] = (512, 1024), dropout: float = 0.5,
                 smooth: float = 0.0):
        super().__init__()
        self.width, self.size, self.smooth = width, size, smooth
        self.net = nn.Sequential(
            nn.Linear(width, hidden[0]), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden[0], hidden[1]), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden[1], size * size), nn.Tanh(),
        )
        if smooth:  # a prior the paper does not use: BOLD changes are spatially smooth, pixel noise is not
            radius = math.ceil(3 * smooth)
            if radius >= size:
                raise InputError(f"smooth={smooth} px: the filter (radius {radius} px) is too wide for "
                                 f"{size}-px images; use a sigma below {size / 3:.1f}")
            x = torch.arange(-radius, radius + 1, dtype=torch.float64)
            g = torch.exp(-0.5 * (x / smooth) ** 2)
            g /= g.sum()
            self.register_buffer("kernel", torch.outer(g, g).float()[None, None])
            self.register_buffer("base", torch.zeros(1, 1, size, size))  # the mean image, Tanh scale

    def start_from(self, mean_image: torch.Tensor, weight_scale: float = 0.1) -> None:
        """Output bias = the mean image (``(S, S)`` in [0, 1]) through atanh; output weights scaled."""
        last = self.net[-2]
        with torch.no_grad():
            target = (mean_image.reshape(-1).double() * 2 - 1).clamp(-0.999, 0.999)
            last.bias.copy_(torch.atanh(target).float())
            last.weight.mul_(weight_scale)
            if self.smooth:
                self.base.copy_(target.float().view_as(self.base))

    def forward(self, meg: torch.Tensor) -> torch.Tensor:
        out = self.net(meg).view(-1, 1, self.size, self.size)
        if self.smooth:  # Gaussian filter (sigma ``smooth`` px) of the change from the mean image
            r = self.kernel.shape[-1] // 2
            out = self.base + F.conv2d(F.pad(out - self.base, (r, r, r, r), mode="reflect"), self.kernel)
        return out


class Discriminator(nn.Module):
    """(MEG vector, image) -> logits of a map of patch real/fake probabilities.

    The MEG vector is projected by a linear layer to an ``S x S`` map and stacked with the image as
    a second channel; strided convolutions with BatchNorm and LeakyReLU(0.2) reduce it to a
    ``(S/8) x (S/8)`` map of logits (sigmoid applied by the loss: ``BCEWithLogitsLoss``)."""

    def __init__(self, width: int, size: int, channels: int = 32):
        super().__init__()
        self.size = size
        self.condition = nn.Linear(width, size * size)
        c = channels
        self.net = nn.Sequential(
            nn.Conv2d(2, c, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(c, 2 * c, 4, stride=2, padding=1), nn.BatchNorm2d(2 * c),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(2 * c, 4 * c, 4, stride=2, padding=1), nn.BatchNorm2d(4 * c),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(4 * c, 1, 3, stride=1, padding=1),
        )

    def forward(self, meg: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        condition = self.condition(meg).view(-1, 1, self.size, self.size)
        return self.net(torch.cat([condition, image], dim=1))


class LowRankGenerator(nn.Module):
    """MEG vector ``(B, width)`` -> target vector ``(B, values)`` (voxels or parcels, Tanh scale): the
    paper's MLP predicting ``k`` coefficients of the training deviations' principal components, so the
    output layer has ``1024 x k`` weights instead of ``1024 x values`` (hundreds of millions at 200k+
    voxels). Output = ``mean + (coefficients * scale) @ components``: ``components (k, values)``
    orthonormal rows, ``scale (k,)`` each coefficient's training standard deviation (so the network
    works in unit-variance coefficients), ``mean (values,)`` the mean training target. The untrained
    generator draws the mean (output weights scaled down, biases zero); no Tanh, as the mean plus a
    change in a k-dimensional subspace is what is learned."""

    def __init__(self, width: int, components: torch.Tensor, scale: torch.Tensor, mean: torch.Tensor,
                 hidden: tuple[int, int] = (512, 1024), dropout: float = 0.5):
        super().__init__()
        k, values = components.shape
        self.width, self.values = width, values
        self.register_buffer("components", components.float().contiguous())
        self.register_buffer("scale", scale.float().reshape(k))
        self.register_buffer("mean", mean.float().reshape(values))
        self.net = nn.Sequential(
            nn.Linear(width, hidden[0]), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden[0], hidden[1]), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden[1], k),
        )
        with torch.no_grad():
            self.net[-1].weight.mul_(0.1)
            self.net[-1].bias.zero_()

    def coefficients(self, meg: torch.Tensor) -> torch.Tensor:
        return self.net(meg) * self.scale

    def forward(self, meg: torch.Tensor) -> torch.Tensor:
        return self.mean + self.coefficients(meg) @ self.components


class VectorDiscriminator(nn.Module):
    """(MEG vector, target vector) -> one logit per sample: the conditional critic for voxel and parcel
    targets (a PatchGAN needs an image). Each input is projected to ``hidden`` units, concatenated,
    and judged by an MLP with LeakyReLU(0.2), as the PatchGAN's layers are."""

    def __init__(self, width: int, values: int, hidden: int = 256):
        super().__init__()
        self.condition = nn.Linear(width, hidden)
        self.target = nn.Linear(values, hidden)
        self.net = nn.Sequential(nn.LeakyReLU(0.2), nn.Linear(2 * hidden, hidden), nn.LeakyReLU(0.2),
                                 nn.Linear(hidden, 1))

    def forward(self, meg: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([self.condition(meg), self.target(target)], dim=1))
