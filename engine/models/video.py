"""The causal 3-D residual autoencoder with LSTM heads of MOCCA's ShanghaiTech experiments (METHOD.md 4.2-4.3).

Input clips are (B, 3, T, H, W) in [0, 1]; T, H and W are settings (16 x 256 x 512 in the paper; tests use tiny
clips). T must be a multiple of 4 and H, W multiples of 32 (two temporal and five spatial stride-2 stages).

Encoder (shapes for 16 x 256 x 512):

    block 0  Down3D 3->8    stride (1,2,2)                       8 x 16 x 128 x 256
    block 1  Down3D 8->16   stride (1,2,2)                      16 x 16 x  64 x 128
    block 2  Down3D 16->32  stride (2,2,2)                      32 x  8 x  32 x  64
    block 3  Down3D 32->64  stride (1,2,2)                      64 x  8 x  16 x  32
    block 4  Down3D 64->64  stride (2,2,2)                      64 x  4 x   8 x  16
    tdl_1    time-shared Linear 64*(H/32)*(W/32) -> 512, tanh    4 x 512
    tdl_2    time-shared Linear 512 -> code, sigmoid             4 x code  (the code the decoder reads)

Down3D: masked 3x3x3 conv (stride s) -> BN -> LReLU -> masked 3x3x3 conv -> BN, plus a 1x1x1 conv (stride s) -> BN
shortcut, then LReLU. "Masked" zeroes the kernel taps on future frames, so every output frame depends only on the
current and earlier input frames (causal in time).

The seven MOCCA layers, indexed as the reference's keys conv_lstm_o_0..4, tdl_lstm_o_0, tdl_lstm_o_1: each is an
LSTM over a sequence, and the layer's vector is the LSTM output at the last time step (hidden size, x2 if
bidirectional). Layers 0-4 read block k's output averaged over H x W, a (T_k, C_k) sequence (lengths 16, 16, 8, 8,
4; sizes 8, 16, 32, 64, 64), or, with selectors, the output of a Selector3D on the block's map; layers 5 and 6 read
the tanh(tdl_1) and sigmoid(tdl_2) sequences. All seven LSTMs are built (they are small); only the selected ones
get gradients.

Selector3D (optional, `selectors=True`): Conv3d C->2C k3 stride (1,2,2) -> BN3d -> ReLU -> Conv3d 2C->4C k3 -> BN3d
-> ReLU -> Conv3d 4C->4C k1, flatten each time step, time-shared Linear -> `selector_hidden` -> BatchNorm1d over the
time axis (the reference's quirk: the T steps act as BN channels) -> ReLU -> Linear -> C. The first Linear of each
selector reads the whole (4C, H_k/2, W_k/2) map, so its size is 4C*H_k*W_k/4 x hidden: at 256 x 512 the five
selectors read 499,712 values per time step. The reference's hidden size 256 puts 130.7 M parameters there (its
143.4 M model is 91% selectors; both counts are reproduced exactly with `selector_hidden=256`). Our default
`selector_hidden` is 64: it is the widest selector output (C <= 64), so the hidden layer never narrows below what
a selector emits, and it cuts the selectors to 34.7 M parameters (47.5 M in all, a 190 MB fp32 checkpoint instead
of 575 MB, 3x less optimiser state) while keeping the design. Without selectors (the default, as the reference
without `-use`) the model has 12.7 M parameters at 16 x 256 x 512, code 1024.

Decoder: time-shared Linear code->512, tanh, Linear 512->64*(H/32)*(W/32), LReLU, reshape to (64, T/4, H/32, W/32),
five Up3D blocks 64->64 (2,2,2), 64->32 (1,2,2), 32->16 (2,2,2), 16->8 (1,2,2), 8->8 (1,2,2), then a 1x1x1 conv
8->3 with bias; no output activation. Up3D: 5x5x5 transposed conv (stride s) -> BN -> LReLU -> masked 3x3x3 conv ->
BN, plus a 5x5x5 transposed conv (stride s) -> BN shortcut, then LReLU. Convs carry no bias (BatchNorm follows);
linear layers do (as in the reference).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.models.registry import register_model

LEAKY = 0.01
TDL_WIDTH = 512
ENCODER_BLOCKS = ((3, 8, (1, 2, 2)), (8, 16, (1, 2, 2)), (16, 32, (2, 2, 2)), (32, 64, (1, 2, 2)), (64, 64, (2, 2, 2)))
DECODER_BLOCKS = ((64, 64, (2, 2, 2)), (64, 32, (1, 2, 2)), (32, 16, (2, 2, 2)), (16, 8, (1, 2, 2)), (8, 8, (1, 2, 2)))
LAYER_KEYS = tuple(f"conv_lstm_o_{k}" for k in range(5)) + ("tdl_lstm_o_0", "tdl_lstm_o_1")
NUM_LAYERS = len(LAYER_KEYS)


class MaskedConv3d(nn.Conv3d):
    """Conv3d whose kernel taps on future frames (temporal index > centre) are zero: causal in time."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        mask = torch.ones_like(self.weight)
        mask[:, :, self.kernel_size[0] // 2 + 1 :] = 0  # (C_out, C_in, kT, kH, kW): drop kT indices after centre
        self.register_buffer("mask", mask, persistent=False)
        with torch.no_grad():
            self.weight.mul_(mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight * self.mask, self.bias)


class Down3D(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: tuple[int, int, int]):
        super().__init__()
        self.body = nn.Sequential(
            MaskedConv3d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm3d(c_out),
            nn.LeakyReLU(LEAKY),
            MaskedConv3d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm3d(c_out),
        )
        self.shortcut = nn.Sequential(nn.Conv3d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm3d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.body(x) + self.shortcut(x), LEAKY)


class Up3D(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: tuple[int, int, int]):
        super().__init__()
        pad = tuple(s - 1 for s in stride)  # output_padding: each side grows exactly by its stride

        def up() -> nn.ConvTranspose3d:
            return nn.ConvTranspose3d(c_in, c_out, 5, stride=stride, padding=2, output_padding=pad, bias=False)

        self.body = nn.Sequential(
            up(),
            nn.BatchNorm3d(c_out),
            nn.LeakyReLU(LEAKY),
            MaskedConv3d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm3d(c_out),
        )
        self.shortcut = nn.Sequential(up(), nn.BatchNorm3d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.body(x) + self.shortcut(x), LEAKY)


class Selector3D(nn.Module):
    """A learned (T, C) sequence from a (C, T, H, W) map (METHOD.md 4.3)."""

    def __init__(self, channels: int, steps: int, height: int, width: int, hidden: int):
        super().__init__()
        c = channels
        self.convs = nn.Sequential(
            nn.Conv3d(c, 2 * c, 3, stride=(1, 2, 2), padding=1),
            nn.BatchNorm3d(2 * c),
            nn.ReLU(),
            nn.Conv3d(2 * c, 4 * c, 3, padding=1),
            nn.BatchNorm3d(4 * c),
            nn.ReLU(),
            nn.Conv3d(4 * c, 4 * c, 1),
        )
        flat = 4 * c * ((height + 1) // 2) * ((width + 1) // 2)
        self.fc1 = nn.Linear(flat, hidden)
        self.time_norm = nn.BatchNorm1d(steps)  # normalises (B, T, hidden) with the T steps as channels
        self.fc2 = nn.Linear(hidden, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.convs(x).transpose(1, 2).flatten(2)  # (B, T, 4C * H/2 * W/2)
        return self.fc2(F.relu(self.time_norm(self.fc1(h))))  # (B, T, C)


class CausalVideoEncoder(nn.Module):
    """Five causal Down3D blocks, two time-distributed linear layers and an LSTM head per MOCCA layer."""

    def __init__(
        self,
        clip_length: int = 16,
        frame_size: tuple[int, int] = (256, 512),
        code_size: int = 1024,
        lstm_hidden: int = 100,
        lstm_layers: int = 1,
        lstm_dropout: float = 0.0,
        bidirectional: bool = False,
        selectors: bool = False,
        selector_hidden: int = 64,
    ):
        super().__init__()
        height, width = frame_size
        if clip_length % 4 or height % 32 or width % 32 or min(clip_length, height, width) <= 0:
            raise ValueError(
                f"clip length must be a multiple of 4 and frame sides multiples of 32, got {clip_length} frames of "
                f"{height}x{width}: choose e.g. 16 frames of 256x512"
            )
        self.blocks = nn.ModuleList(Down3D(c_in, c_out, s) for c_in, c_out, s in ENCODER_BLOCKS)
        # (C_k, T_k, H_k, W_k) of each block's output
        shapes, t, h, w = [], clip_length, height, width
        for _, c_out, (st, sh, sw) in ENCODER_BLOCKS:
            t, h, w = t // st, h // sh, w // sw
            shapes.append((c_out, t, h, w))
        self.block_shapes = tuple(shapes)
        self.deep_shape = shapes[-1]  # (64, T/4, H/32, W/32)
        c, _, h, w = self.deep_shape
        self.tdl_1 = nn.Linear(c * h * w, TDL_WIDTH)
        self.tdl_2 = nn.Linear(TDL_WIDTH, code_size)
        self.selectors = (
            nn.ModuleList(Selector3D(c, t, h, w, selector_hidden) for c, t, h, w in self.block_shapes)
            if selectors
            else None
        )
        inputs = [s[0] for s in self.block_shapes] + [TDL_WIDTH, code_size]
        self.heads = nn.ModuleList(
            nn.LSTM(
                size, lstm_hidden, num_layers=lstm_layers, batch_first=True, bidirectional=bidirectional,
                dropout=lstm_dropout if lstm_layers > 1 else 0.0,
            )
            for size in inputs
        )  # fmt: skip
        self.layer_dims = (lstm_hidden * (2 if bidirectional else 1),) * NUM_LAYERS
        self.code_size = code_size

    @property
    def num_layers(self) -> int:
        return NUM_LAYERS

    def encode(self, x: torch.Tensor, layers: tuple[int, ...] | list[int] = ()) -> tuple[torch.Tensor, list]:
        """(code sequence (B, T/4, code), [layer vectors (B, D) in the order of `layers`]) of clips (B, 3, T, H, W)."""
        wanted = set(layers)
        sequences: dict[int, torch.Tensor] = {}
        h = x
        for k, block in enumerate(self.blocks):
            h = block(h)  # (B, C_k, T_k, H_k, W_k)
            if k in wanted and self.selectors is not None:
                sequences[k] = self.selectors[k](h)  # (B, T_k, C_k)
            elif k in wanted:
                sequences[k] = h.mean(dim=(3, 4)).transpose(1, 2)  # (B, T_k, C_k)
        deep = h.transpose(1, 2).flatten(2)  # (B, T/4, 64 * H/32 * W/32): one vector per remaining time step
        tdl_1 = torch.tanh(self.tdl_1(deep))  # (B, T/4, 512)
        code = torch.sigmoid(self.tdl_2(tdl_1))  # (B, T/4, code)
        sequences[5], sequences[6] = tdl_1, code
        features = [self.heads[k](sequences[k])[0][:, -1] for k in layers]  # LSTM output at the last step
        return code, features

    def features(self, x: torch.Tensor, layers: tuple[int, ...] | list[int]) -> list[torch.Tensor]:
        return self.encode(x, layers)[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x)[0]


class CausalVideoDecoder(nn.Module):
    def __init__(self, deep_shape: tuple[int, int, int, int], code_size: int):
        super().__init__()
        c, _, h, w = deep_shape
        self.deep_shape = deep_shape
        self.fc = nn.Sequential(
            nn.Linear(code_size, TDL_WIDTH), nn.Tanh(), nn.Linear(TDL_WIDTH, c * h * w), nn.LeakyReLU(LEAKY)
        )
        self.blocks = nn.Sequential(*(Up3D(c_in, c_out, s) for c_in, c_out, s in DECODER_BLOCKS))
        self.out = nn.Conv3d(DECODER_BLOCKS[-1][1], 3, 1)

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        c, t, h, w = self.deep_shape
        x = self.fc(code).view(len(code), t, c, h, w).transpose(1, 2)  # (B, 64, T/4, H/32, W/32)
        return self.out(self.blocks(x))  # (B, 3, T, H, W)


class CausalVideoAutoencoder(nn.Module):
    """`forward(clips) -> reconstruction`; `reconstruct(clips, layers)` gives the layer vectors from the same pass."""

    def __init__(self, **encoder_options):
        super().__init__()
        self.encoder = CausalVideoEncoder(**encoder_options)
        self.decoder = CausalVideoDecoder(self.encoder.deep_shape, self.encoder.code_size)

    def reconstruct(self, x: torch.Tensor, layers: tuple[int, ...] | list[int]) -> tuple[torch.Tensor, list]:
        code, features = self.encoder.encode(x, layers)
        return self.decoder(code), features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


@register_model("causal3d_lstm")
def causal3d_lstm(
    clip_length: int = 16,
    frame_size: tuple[int, int] = (256, 512),
    code_size: int = 1024,
    lstm_hidden: int = 100,
    lstm_layers: int = 1,
    lstm_dropout: float = 0.0,
    bidirectional: bool = False,
    selectors: bool = False,
    selector_hidden: int = 64,
    in_channels: int = 3,
) -> CausalVideoAutoencoder:
    """MOCCA's ShanghaiTech model: 16 x 256 x 512 RGB clips, code 1024 (the setting behind the reference's quoted
    parameter count), LSTM hidden 100 (the reference's default), selectors off unless asked for; layers 0..6."""
    assert in_channels == 3, "the video model reads RGB clips"
    return CausalVideoAutoencoder(
        clip_length=clip_length, frame_size=tuple(frame_size), code_size=code_size, lstm_hidden=lstm_hidden,
        lstm_layers=lstm_layers, lstm_dropout=lstm_dropout, bidirectional=bidirectional, selectors=selectors,
        selector_hidden=selector_hidden,
    )  # fmt: skip
