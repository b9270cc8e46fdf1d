"""The residual autoencoder of MOCCA's MVTec AD experiments, with the optional selector heads (METHOD.md 3.3).

Encoder (shapes for a 128 input; a 64 texture patch halves every side):

    layer 0  conv 3x3 3->32, no padding, raw output (before activation)        32 x 126 x 126
    layer 1  Residual(32) on LeakyReLU(layer 0)                                32 x 126 x 126
    layer 2  Downsample 32->64   (stride 2)                                    64 x 63 x 63
    layer 3  Downsample 64->128                                               128 x 32 x 32
    layer 4  Downsample 128->256                                              256 x 16 x 16
    layer 5  LeakyReLU(BN1d(fc1(flatten(layer 4)))), fc1: 256*(S/8)^2 -> 256   256
    layer 6  fc2: 256 -> code, raw (the code before its sigmoid)               code

How these map to the paper and to the reference code. The paper's Table VII numbers the layers 0..6: the first
conv, four residual stages (one Residual and three Downsample blocks), then two fully connected layers; that is
exactly layers 0..6 above, and they are the reference code's encoder indices 0..6 (its outputs o1, o2, o3, o4,
o5, o7, o8). The reference also exposes an index 7, sigmoid(o8) = the code the decoder reads. It is not a layer of
its own (a fixed monotone function of layer 6, not in the paper's numbering), so it is dropped: `num_layers` is 7
and layer k here is Table VII's layer k. `search_spaces/mvtec.py` uses this numbering.

A layer's vector: without selectors a map is averaged over space (C values) and a vector is taken as it is; with
selectors every layer goes through its own small head and yields 128 values whatever its size (maps: adaptive
*max* pool to 8x8, 1x1 conv to one channel, then an MLP; vectors: an MLP). The selectors belong to the encoder, so
stage 2 (which optimises `encoder.parameters()`) trains them together with the encoder; stage 1 never calls
them. BatchNorm uses PyTorch's defaults (affine); convs have no bias, linear layers do (as in the reference).

Decoder: Linear(code->256) -> BN -> LReLU -> Linear(256 -> 256*(S/8)^2) -> BN -> LReLU, reshape, three Upsample
blocks 256->128->64->32, Residual(32), 1x1 conv to the input channels; no output activation (inputs are in
[-1, 1]). It reads sigmoid(layer 6).

Parameter counts at 128 input, code 128 (`encoder_parameters` below): 18,037,216 without selectors and
18,453,605 with them. The reference reports 18.04 M and 18.52 M; the 66,432 difference is the selector of the
dropped index 7.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.models.registry import register_model

LEAKY = 0.01
HIDDEN = 256  # width of fc1, of the decoder's first linear layer and of the selectors' hidden layer
SELECTOR_DIM = 128  # every selector's output size
SELECTOR_POOL = 8  # selectors max-pool a map to 8 x 8 before the 1x1 conv
MAP_CHANNELS = (32, 32, 64, 128, 256)  # channels of layers 0..4
NUM_LAYERS = 7


def _conv3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


class ResidualBlock(nn.Module):
    """conv3x3 -> BN -> LReLU -> conv3x3 -> BN, plus the input, then LReLU (C -> C, same size)."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            _conv3(channels, channels), nn.BatchNorm2d(channels), nn.LeakyReLU(LEAKY),
            _conv3(channels, channels), nn.BatchNorm2d(channels),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.body(x) + x, LEAKY)


class DownsampleBlock(nn.Module):
    """Residual block that halves the size (stride-2 first conv) with a strided 1x1 conv shortcut."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.body = nn.Sequential(
            _conv3(c_in, c_out, stride=2), nn.BatchNorm2d(c_out), nn.LeakyReLU(LEAKY),
            _conv3(c_out, c_out), nn.BatchNorm2d(c_out),
        )  # fmt: skip
        self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=2, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.body(x) + self.shortcut(x), LEAKY)


class UpsampleBlock(nn.Module):
    """Residual block that doubles the size: a 5x5 transposed conv (stride 2) and a 1x1 transposed shortcut."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ConvTranspose2d(c_in, c_out, 5, stride=2, padding=2, output_padding=1, bias=False),
            nn.BatchNorm2d(c_out), nn.LeakyReLU(LEAKY),
            _conv3(c_out, c_out), nn.BatchNorm2d(c_out),
        )  # fmt: skip
        self.shortcut = nn.Sequential(
            nn.ConvTranspose2d(c_in, c_out, 1, stride=2, output_padding=1, bias=False), nn.BatchNorm2d(c_out)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.body(x) + self.shortcut(x), LEAKY)


def _head(in_features: int) -> list[nn.Module]:
    return [nn.Linear(in_features, HIDDEN), nn.BatchNorm1d(HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, SELECTOR_DIM)]


def map_selector(channels: int) -> nn.Sequential:
    """(B, C, H, W) -> (B, 128): adaptive max pool to 8x8, 1x1 conv to one channel (with bias), MLP."""
    return nn.Sequential(
        nn.AdaptiveMaxPool2d(SELECTOR_POOL), nn.Conv2d(channels, 1, 1), nn.Flatten(), *_head(SELECTOR_POOL**2)
    )


def vector_selector(in_features: int) -> nn.Sequential:
    """(B, D) -> (B, 128): Linear -> BN -> ReLU -> Linear."""
    return nn.Sequential(*_head(in_features))


def deepest_size(input_size: int) -> int:
    """Side of layer 4's map: the unpadded first conv takes 2 pixels off, each Downsample halves (rounding up)."""
    side = input_size - 2
    for _ in range(3):
        side = (side + 1) // 2
    return side


class ResidualEncoder(nn.Module):
    """`stages[k]` produces layer k (see the module docstring); `forward` gives the code sigmoid(layer 6)."""

    def __init__(self, in_channels: int = 3, input_size: int = 128, code_size: int = 128, use_selectors: bool = True):
        super().__init__()
        side = deepest_size(input_size)
        self.stages = nn.ModuleList([
            nn.Conv2d(in_channels, MAP_CHANNELS[0], 3, bias=False),  # no padding: 126 from 128
            nn.Sequential(nn.LeakyReLU(LEAKY), ResidualBlock(MAP_CHANNELS[1])),
            DownsampleBlock(MAP_CHANNELS[1], MAP_CHANNELS[2]),
            DownsampleBlock(MAP_CHANNELS[2], MAP_CHANNELS[3]),
            DownsampleBlock(MAP_CHANNELS[3], MAP_CHANNELS[4]),
            nn.Sequential(
                nn.Flatten(), nn.Linear(MAP_CHANNELS[4] * side * side, HIDDEN), nn.BatchNorm1d(HIDDEN),
                nn.LeakyReLU(LEAKY),
            ),
            nn.Linear(HIDDEN, code_size),
        ])  # fmt: skip
        self.selectors = None
        if use_selectors:
            heads = [map_selector(c) for c in MAP_CHANNELS] + [vector_selector(HIDDEN), vector_selector(code_size)]
            self.selectors = nn.ModuleList(heads)
            self.layer_dims = (SELECTOR_DIM,) * NUM_LAYERS
        else:
            self.layer_dims = (*MAP_CHANNELS, HIDDEN, code_size)

    @property
    def num_layers(self) -> int:
        return NUM_LAYERS

    def features(self, x: torch.Tensor, layers: tuple[int, ...] | list[int]) -> list[torch.Tensor]:
        """Vectors (B, layer_dims[k]) of the requested layers, in the order asked; stops at the deepest one."""
        wanted = set(layers)
        out: dict[int, torch.Tensor] = {}
        h = x  # (B, C_in, S, S)
        for k, stage in enumerate(self.stages):
            h = stage(h)  # layer k: (B, C_k, H_k, W_k) for k <= 4, (B, D_k) after
            if k in wanted:
                if self.selectors is not None:
                    out[k] = self.selectors[k](h)  # (B, 128)
                else:
                    out[k] = h.mean(dim=(2, 3)) if h.dim() == 4 else h
                if len(out) == len(wanted):
                    break
        return [out[k] for k in layers]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return torch.sigmoid(x)  # (B, code)


class ResidualDecoder(nn.Module):
    """Code (B, code) -> reconstruction (B, C, S, S); no output activation."""

    def __init__(self, out_channels: int = 3, input_size: int = 128, code_size: int = 128):
        super().__init__()
        self.side = input_size // 8
        width = MAP_CHANNELS[4] * self.side * self.side
        self.expand = nn.Sequential(
            nn.Linear(code_size, HIDDEN), nn.BatchNorm1d(HIDDEN), nn.LeakyReLU(LEAKY),
            nn.Linear(HIDDEN, width), nn.BatchNorm1d(width), nn.LeakyReLU(LEAKY),
        )  # fmt: skip
        self.up = nn.Sequential(
            UpsampleBlock(MAP_CHANNELS[4], MAP_CHANNELS[3]),
            UpsampleBlock(MAP_CHANNELS[3], MAP_CHANNELS[2]),
            UpsampleBlock(MAP_CHANNELS[2], MAP_CHANNELS[1]),
            ResidualBlock(MAP_CHANNELS[1]),
            nn.Conv2d(MAP_CHANNELS[1], out_channels, 1, bias=False),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.expand(z).view(len(z), MAP_CHANNELS[4], self.side, self.side)  # (B, 256, S/8, S/8)
        return self.up(h)


class ResidualAutoencoder(nn.Module):
    def __init__(self, in_channels: int = 3, input_size: int = 128, code_size: int = 128, use_selectors: bool = True):
        super().__init__()
        if input_size < 8 or input_size % 8:
            raise ValueError(
                f"the MVTec autoencoder needs an input side that is a multiple of 8 (got {input_size}): "
                "choose image_size (objects) or patch_size (textures) accordingly"
            )
        self.encoder = ResidualEncoder(in_channels, input_size, code_size, use_selectors)
        self.decoder = ResidualDecoder(in_channels, input_size, code_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def encoder_parameters(model: ResidualAutoencoder) -> tuple[int, int]:
    """(trunk, selectors) parameter counts of the encoder."""
    enc = model.encoder
    selectors = sum(p.numel() for p in enc.selectors.parameters()) if enc.selectors is not None else 0
    return sum(p.numel() for p in enc.parameters()) - selectors, selectors


@register_model("resae_mvtec")
def resae_mvtec(
    code_size: int = 128, in_channels: int = 3, input_size: int = 128, use_selectors: bool = True
) -> ResidualAutoencoder:
    """MVTec residual AE with selector heads (the reference README's MVTec usage); layers 0..6 of 128 values."""
    return ResidualAutoencoder(in_channels, input_size, code_size, use_selectors)


@register_model("resae_mvtec_plain")
def resae_mvtec_plain(code_size: int = 128, in_channels: int = 3, input_size: int = 128) -> ResidualAutoencoder:
    """The same AE without selectors: maps are averaged over space (layer sizes 32, 32, 64, 128, 256, 256, code)."""
    return ResidualAutoencoder(in_channels, input_size, code_size, use_selectors=False)
