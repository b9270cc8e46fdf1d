"""K LeNet autoencoders of one architecture packed into one module with grouped convolutions.

A small model leaves a GPU idle (kernel launches, not arithmetic, set the pace): packing K runs, e.g. K seeds of one
configuration, into one model makes every kernel K times wider for the same number of launches. Model k owns
channels [k*C, (k+1)*C) of every layer, and each layer keeps the models apart:

- convolutions and transposed convolutions use `groups=K`, so model k's output channels see only its own inputs;
- a BatchNorm over K*C channels normalises every channel over the batch on its own: that is K independent
  BatchNorms, each with its own running mean and variance (model k's statistics are channels of model k);
- the code layer is a batched matmul with one (code, in) weight per model (`PackedLinear`);
- LeakyReLU, max pooling, upsampling and the sigmoid act per channel.

Inputs are the K models' batches side by side along channels, (B, K*C, H, W) (`pack_inputs`); outputs and
features come back per model. Parameters mirror `LeNetAutoencoder`'s names, so `pack` / `unpack` move weights and
BatchNorm statistics between K separate models and one packed model. Adam acts elementwise, so one Adam over the
packed parameters takes exactly the steps K separate Adams would, as long as the K runs share learning rate,
weight decay and milestones (tests/test_packed.py checks outputs, features, gradients and an Adam step).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.models.lenet import BN_EPS, LEAKY, LeNetAutoencoder


class PackedLinear(nn.Module):
    """K bias-free linear layers: (B, K, in) -> (B, K, out), weight (K, out, in)."""

    def __init__(self, k: int, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(k, out_features, in_features))
        for w in self.weight:  # each model's slice as nn.Linear would initialise it
            nn.init.kaiming_uniform_(w, a=5**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bki,koi->bko", x, self.weight)


class PackedLeNetEncoder(nn.Module):
    def __init__(self, k: int, in_channels: int, channels: tuple[int, ...], kernel: int, input_size: int, code: int):
        super().__init__()
        self.k = k
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        c_in = in_channels
        for c_out in channels:
            self.convs.append(nn.Conv2d(k * c_in, k * c_out, kernel, padding=kernel // 2, bias=False, groups=k))
            self.norms.append(nn.BatchNorm2d(k * c_out, eps=BN_EPS, affine=False))
            c_in = c_out
        self.final_size = input_size // 2 ** len(channels)
        self.fc = PackedLinear(k, c_in * self.final_size**2, code)
        self.layer_dims = (*channels, code)

    @property
    def num_layers(self) -> int:
        return len(self.layer_dims)

    def features(self, x: torch.Tensor, layers: tuple[int, ...] | list[int]) -> list[torch.Tensor]:
        """Per model vectors of the requested layers: (B, K*C, H, W) -> list of (B, K, D_k), in the order asked."""
        wanted = set(layers)
        out: dict[int, torch.Tensor] = {}
        b = len(x)
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
            x = conv(x)  # (B, K*C_i, H_i, W_i), raw conv output
            if i in wanted:
                out[i] = x.mean(dim=(2, 3)).view(b, self.k, -1)
            if len(out) == len(wanted):
                return [out[j] for j in layers]
            x = F.max_pool2d(F.leaky_relu(norm(x), LEAKY), 2)
        # (B, K*C, h, w) -> (B, K, C*h*w): model k's block flattens in (C, h, w) order, as nn.Flatten does alone
        out[len(self.convs)] = self.fc(x.reshape(b, self.k, -1))
        return [out[j] for j in layers]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x, (self.num_layers - 1,))[0]  # (B, K, code)


class PackedLeNetDecoder(nn.Module):
    def __init__(self, k: int, out_channels: int, channels: tuple[int, ...], kernel: int, final_size: int, code: int):
        super().__init__()
        self.k, self.final_size = k, final_size
        self.code_norm = nn.BatchNorm1d(k * code, eps=BN_EPS, affine=False)
        widths = [code // final_size**2, *reversed(channels)]
        self.deconvs = nn.ModuleList()
        self.norms = nn.ModuleList()
        for c_in, c_out in zip(widths[:-1], widths[1:], strict=True):
            self.deconvs.append(
                nn.ConvTranspose2d(k * c_in, k * c_out, kernel, padding=kernel // 2, bias=False, groups=k)
            )
            self.norms.append(nn.BatchNorm2d(k * c_out, eps=BN_EPS, affine=False))
        self.out = nn.ConvTranspose2d(
            k * widths[-1], k * out_channels, kernel, padding=kernel // 2, bias=False, groups=k
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(B, K*code) -> (B, K*C_out, H, W); model k's code fills its own block of channels."""
        s = self.final_size
        x = F.leaky_relu(self.code_norm(z).view(len(z), -1, s, s), LEAKY)
        for deconv, norm in zip(self.deconvs, self.norms, strict=True):
            x = F.interpolate(F.leaky_relu(norm(deconv(x)), LEAKY), scale_factor=2)
        return torch.sigmoid(self.out(x))


class PackedLeNetAutoencoder(nn.Module):
    """K LeNet autoencoders: forward (B, K*C, H, W) -> (B, K*C, H, W); encoder.features -> list of (B, K, D_k)."""

    def __init__(self, k: int, in_channels: int, channels: tuple[int, ...], kernel: int, input_size: int, code: int):
        super().__init__()
        self.k, self.in_channels = k, in_channels
        self.architecture = dict(in_channels=in_channels, channels=channels, kernel=kernel, input_size=input_size,
                                 code_size=code)  # fmt: skip
        self.encoder = PackedLeNetEncoder(k, in_channels, channels, kernel, input_size, code)
        self.code_norm = nn.BatchNorm1d(k * code, eps=BN_EPS, affine=False)
        self.decoder = PackedLeNetDecoder(k, in_channels, channels, kernel, self.encoder.final_size, code)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.code_norm(self.encoder(x).flatten(1)))


def architecture_of(model: LeNetAutoencoder) -> dict:
    """The constructor arguments of a LeNetAutoencoder, read off its layers."""
    enc = model.encoder
    return dict(
        in_channels=enc.convs[0].in_channels,
        channels=tuple(c.out_channels for c in enc.convs),
        kernel=enc.convs[0].kernel_size[0],
        input_size=enc.final_size * 2 ** len(enc.convs),
        code_size=enc.fc.out_features,
    )


_PER_MODEL_MATRIX = "encoder.fc.weight"  # PackedLinear: (K, out, in), one matrix per model


def _packed_value(key: str, values: list[torch.Tensor]) -> torch.Tensor:
    if values[0].dim() == 0:  # num_batches_tracked: one counter, the same for K models trained in step
        return values[0]
    if key == _PER_MODEL_MATRIX:
        return torch.stack(values)
    return torch.cat(values)  # channels (and BatchNorm statistics) of model k are block k along dim 0


def pack(models: list[LeNetAutoencoder]) -> PackedLeNetAutoencoder:
    """One packed model holding the weights and BatchNorm statistics of K models of one architecture."""
    arch = architecture_of(models[0])
    if any(architecture_of(m) != arch for m in models):
        raise ValueError("only models of one architecture can be packed: build them with the same factory settings")
    a = arch
    packed = PackedLeNetAutoencoder(len(models), a["in_channels"], a["channels"], a["kernel"], a["input_size"],
                                    a["code_size"])  # fmt: skip
    states = [m.state_dict() for m in models]
    packed.load_state_dict({key: _packed_value(key, [s[key] for s in states]) for key in states[0]})
    return packed.to(next(models[0].parameters()).device)


def unpack(packed: PackedLeNetAutoencoder, k: int) -> LeNetAutoencoder:
    """Model k of a packed model as a plain LeNetAutoencoder (to score or store it like any single run)."""
    a = packed.architecture
    model = LeNetAutoencoder(a["in_channels"], a["channels"], a["kernel"], a["input_size"], a["code_size"])
    state = {}
    for key, value in packed.state_dict().items():
        if value.dim() == 0:
            state[key] = value.clone()
        elif key == _PER_MODEL_MATRIX:
            state[key] = value[k].clone()
        else:
            state[key] = value.chunk(packed.k)[k].clone()
    model.load_state_dict(state)
    return model.to(next(packed.parameters()).device)


def pack_inputs(xs: torch.Tensor) -> torch.Tensor:
    """(K, B, C, H, W), model k's batch at k -> (B, K*C, H, W), the packed model's input."""
    k, b = xs.shape[:2]
    return xs.transpose(0, 1).reshape(b, k * xs.shape[2], *xs.shape[3:])


def unpack_outputs(y: torch.Tensor, k: int) -> torch.Tensor:
    """(B, K*C, H, W) -> (K, B, C, H, W)."""
    return y.view(len(y), k, -1, *y.shape[2:]).transpose(0, 1)
