"""LeNet-type autoencoders (Deep SVDD's CIFAR-10 net, METHOD.md 2.2) and a version sized for 8x8 digits.

Encoder: `len(channels)` blocks of conv (bias-free) -> BatchNorm (eps 1e-4, no affine) -> LeakyReLU -> 2x2 max
pool, then a bias-free linear layer to the code. The layers MOCCA can pull towards a centroid are the convs and the
final linear layer, indexed 0..len(channels); a conv layer's vector is its raw output (before BN and activation)
averaged over space, as the reference's hooks took it.
Decoder: BatchNorm1d on the code (twice, as the reference has it), reshape, then transposed convs with nearest x2
upsampling back to the input size, sigmoid output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.models.registry import register_model

BN_EPS = 1e-4
LEAKY = 0.01


def _xavier(module: nn.Module) -> None:
    nn.init.xavier_uniform_(module.weight, gain=nn.init.calculate_gain("leaky_relu"))


class LeNetEncoder(nn.Module):
    """Conv blocks then a linear code layer; `features(x, layers)` gives the per-layer vectors."""

    def __init__(self, in_channels: int, channels: tuple[int, ...], kernel: int, input_size: int, code_size: int):
        super().__init__()
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        c_in = in_channels
        for c_out in channels:
            conv = nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False)
            _xavier(conv)
            self.convs.append(conv)
            self.norms.append(nn.BatchNorm2d(c_out, eps=BN_EPS, affine=False))
            c_in = c_out
        self.final_size = input_size // 2 ** len(channels)
        assert self.final_size >= 1, "input too small for this many pooling stages"
        self.fc = nn.Linear(c_in * self.final_size**2, code_size, bias=False)
        self.layer_dims = (*channels, code_size)

    @property
    def num_layers(self) -> int:
        return len(self.layer_dims)

    def features(self, x: torch.Tensor, layers: tuple[int, ...] | list[int]) -> list[torch.Tensor]:
        """Vectors of the requested layers, in the order asked: conv k -> (B, C_k), code -> (B, code)."""
        wanted = set(layers)
        out: dict[int, torch.Tensor] = {}
        for k, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
            x = conv(x)  # (B, C_k, H_k, W_k), raw: before BN and activation
            if k in wanted:
                out[k] = x.mean(dim=(2, 3))
            if len(out) == len(wanted):
                return [out[i] for i in layers]
            x = F.max_pool2d(F.leaky_relu(norm(x), LEAKY), 2)
        out[len(self.convs)] = self.fc(x.flatten(1))
        return [out[i] for i in layers]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x, (self.num_layers - 1,))[0]


class LeNetDecoder(nn.Module):
    def __init__(self, out_channels: int, channels: tuple[int, ...], kernel: int, final_size: int, code_size: int):
        super().__init__()
        assert code_size % final_size**2 == 0, "code size must fill the decoder's first feature map"
        self.code_norm = nn.BatchNorm1d(code_size, eps=BN_EPS, affine=False)
        self.final_size = final_size
        widths = [code_size // final_size**2, *reversed(channels)]
        self.deconvs = nn.ModuleList()
        self.norms = nn.ModuleList()
        for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            deconv = nn.ConvTranspose2d(c_in, c_out, kernel, padding=kernel // 2, bias=False)
            if i > 0:  # the reference leaves the first transposed conv at PyTorch's default init
                _xavier(deconv)
            self.deconvs.append(deconv)
            self.norms.append(nn.BatchNorm2d(c_out, eps=BN_EPS, affine=False))
        self.out = nn.ConvTranspose2d(widths[-1], out_channels, kernel, padding=kernel // 2, bias=False)
        _xavier(self.out)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        s = self.final_size
        x = F.leaky_relu(self.code_norm(z).view(len(z), -1, s, s), LEAKY)
        for deconv, norm in zip(self.deconvs, self.norms, strict=True):
            x = F.interpolate(F.leaky_relu(norm(deconv(x)), LEAKY), scale_factor=2)
        return torch.sigmoid(self.out(x))


class LeNetAutoencoder(nn.Module):
    def __init__(self, in_channels: int, channels: tuple[int, ...], kernel: int, input_size: int, code_size: int):
        super().__init__()
        self.encoder = LeNetEncoder(in_channels, channels, kernel, input_size, code_size)
        self.code_norm = nn.BatchNorm1d(code_size, eps=BN_EPS, affine=False)
        self.decoder = LeNetDecoder(in_channels, channels, kernel, self.encoder.final_size, code_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.code_norm(self.encoder(x)))


@register_model("lenet_cifar10")
def lenet_cifar10(code_size: int = 128, in_channels: int = 3) -> LeNetAutoencoder:
    """Deep SVDD / MOCCA CIFAR-10 LeNet: 3x32x32 input, convs 32-64-128 (k5), code 128; layers 0..3."""
    return LeNetAutoencoder(in_channels, (32, 64, 128), kernel=5, input_size=32, code_size=code_size)


@register_model("lenet_digits")
def lenet_digits(code_size: int = 32, in_channels: int = 1) -> LeNetAutoencoder:
    """The same design for 1x8x8 digits: convs 8-16-32 (k3), code 32; layers 0..3 as on CIFAR-10."""
    return LeNetAutoencoder(in_channels, (8, 16, 32), kernel=3, input_size=8, code_size=code_size)
