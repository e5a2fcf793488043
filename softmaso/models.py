"""The paper's largeCNN (Appendix D), with the activation and normalisation the recipe asks for.

    conv3x3  96 same            32x32
    conv3x3  96 same
    conv3x3  96 same, stride 2  -> 16x16
    conv3x3 192 same
    conv3x3 192 same
    conv3x3 192 same, stride 2  -> 8x8
    conv3x3 192 valid           -> 6x6
    conv1x1 192
    conv1x1   C (classes), global average pooling -> logits

About 1.37 M parameters for C = 10. Each of the first eight convolutions is followed by batch
norm (as the authors' code) and the nonlinearity: the MASO layers whose filters orthogonality
acts on (:meth:`LargeCNN.ortho_convs`). The classifier, not followed by a nonlinearity, is not
concerned by Thm. 4 and left alone [ours].
"""

from __future__ import annotations

import torch
from torch import nn

from softmaso.config import ModelConfig
from softmaso.errors import UserError
from softmaso.nn import BetaVQActivation, swish
from softmaso.theory import specs

# (out channels at width 1, kernel, stride, padding) of the eight MASO convolutions.
LAYERS = (
    (96, 3, 1, 1),
    (96, 3, 1, 1),
    (96, 3, 2, 1),
    (192, 3, 1, 1),
    (192, 3, 1, 1),
    (192, 3, 2, 1),
    (192, 3, 1, 0),
    (192, 1, 1, 0),
)


def channels(c_out: int, width: float) -> int:
    """Channels of a layer that has `c_out` at width 1 (at least 1)."""
    return max(1, round(c_out * width))


def activation_spec(cfg: ModelConfig) -> specs.MaxAffineSpec:
    """The max-affine pieces of the model's nonlinearity (swish: ReLU's, under beta-VQ)."""
    if cfg.activation in ("relu", "swish"):
        return specs.relu()
    if cfg.spec == "pieces":
        if not cfg.pieces:
            raise UserError(
                "model.pieces", "model.spec is pieces, so give the pieces, e.g. '-0.5:-0.5,1:0'"
            )
        return specs.parse_pieces(cfg.pieces, where="model.pieces")
    return {
        "relu": specs.relu(),
        "abs": specs.absolute(),
        "leaky_relu": specs.leaky_relu(cfg.leaky_slope),
    }[cfg.spec]


def make_activation(cfg: ModelConfig, channels: int) -> nn.Module:
    """The nonlinearity of one layer of `channels` channels, from the model config."""
    if cfg.activation == "relu":
        return nn.ReLU(inplace=True)
    if cfg.activation == "swish":
        return swish(channels)
    learn = cfg.learn_beta and 0 < cfg.beta < 1
    return BetaVQActivation(
        activation_spec(cfg), cfg.beta, learnable=learn, channels=channels if learn else None
    )


class LargeCNN(nn.Module):
    """largeCNN of the paper's Appendix D. Input (N, 3, 32, 32) float -> logits (N, classes)."""

    def __init__(self, cfg: ModelConfig, *, num_classes: int, in_channels: int = 3):
        super().__init__()
        blocks: list[nn.Module] = []
        c_in = in_channels
        for c_out, k, stride, pad in LAYERS:
            c = channels(c_out, cfg.width)
            conv = nn.Conv2d(c_in, c, k, stride=stride, padding=pad, bias=not cfg.batch_norm)
            norm = nn.BatchNorm2d(c) if cfg.batch_norm else nn.Identity()
            blocks.append(nn.Sequential(conv, norm, make_activation(cfg, c)))
            c_in = c
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Conv2d(c_in, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.classifier(self.features(x))  # (N, classes, 6, 6)
        return z.mean(dim=(2, 3))  # global average pooling -> (N, classes)

    def ortho_convs(self) -> list[nn.Conv2d]:
        """The convolutions whose filters orthogonality (penalty or exact) applies to."""
        return [block[0] for block in self.features]

    def ortho_names(self) -> list[str]:
        return [f"conv{i + 1}" for i in range(len(self.features))]


def output_size(size: int) -> int:
    """The side of largeCNN's last feature map for input images of side `size` (0: too small)."""
    for _, k, stride, pad in LAYERS:
        size = (size + 2 * pad - k) // stride + 1 if size + 2 * pad >= k else 0
    return max(size, 0)


MIN_INPUT_SIZE = next(n for n in range(1, 64) if output_size(n) >= 1)  # 9 (9 -> 5 -> 3 -> 1)


def check_input_size(height: int, width: int, *, where: str) -> None:
    """UserError unless largeCNN can take (height, width) images: at least MIN_INPUT_SIZE."""
    if min(height, width) < MIN_INPUT_SIZE:
        raise UserError(
            where,
            f"images are {height}x{width}; largeCNN needs at least "
            f"{MIN_INPUT_SIZE}x{MIN_INPUT_SIZE} (two stride-2 layers and a 3x3 valid one)",
        )


build_model = LargeCNN  # build_model(cfg, *, num_classes, in_channels=3): the run's network


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
