"""Plain CIFAR ResNets (He et al., "Deep Residual Learning for Image
Recognition", 2016, section 4.2), the baselines of the nested network.

Same stem, stages and projection shortcuts as the doubly nested ResNet, with
dense convolutions and one classifier at the end, so the two differ only in
causality and heads.  ``width_multiplier`` gives the narrower "full training"
baselines of the doubly nested paper's Figure 4.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from nets.data import check_image_size
from nets.errors import ConfigError
from nets.layers import CIFAR10_MEAN, CIFAR10_STD, BasicBlock, Normalize


@dataclass(frozen=True)
class ResNetConfig:
    num_classes: int = 10
    stage_widths: tuple[int, ...] = (16, 32, 64)  # channels per stage at width_multiplier 1
    blocks_per_stage: int = 5  # 5 -> ResNet-32
    width_multiplier: float = 1.0  # < 1 for the narrow, separately trained baselines
    mean: tuple[float, ...] = CIFAR10_MEAN
    std: tuple[float, ...] = CIFAR10_STD

    def __post_init__(self) -> None:
        if self.num_classes < 2 or self.blocks_per_stage < 1 or not self.stage_widths:
            raise ConfigError(f"invalid ResNet configuration {self}")
        if not 0 < self.width_multiplier <= 4:
            raise ConfigError(f"width_multiplier must be in (0, 4], got {self.width_multiplier}")

    @property
    def min_image_size(self) -> int:
        """The shortest image side: each stage after the first halves the map."""
        return 2 ** (len(self.stage_widths) - 1)

    def channels(self) -> tuple[int, ...]:
        return tuple(max(1, round(w * self.width_multiplier)) for w in self.stage_widths)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


class ResNet(nn.Module):
    """A plain CIFAR ResNet taking images in [0, 1]."""

    def __init__(self, config: ResNetConfig | None = None):
        super().__init__()
        self.config = config = config or ResNetConfig()
        widths = config.channels()
        layers: list[nn.Module] = [
            Normalize(config.mean, config.std),
            nn.Conv2d(len(config.mean), widths[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(),
        ]
        in_channels = widths[0]
        for stage, width in enumerate(widths):
            for index in range(config.blocks_per_stage):
                layers.append(BasicBlock(in_channels, width, 2 if stage > 0 and index == 0 else 1))
                in_channels = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(in_channels, config.num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)))

    def check_image_size(self, image_size: tuple[int, int]) -> None:
        """Refuse ``(height, width)`` images smaller than ``config.min_image_size`` a side."""
        check_image_size(image_size, self.config.min_image_size, "this ResNet")

    def config_dict(self) -> dict:
        return {"family": "resnet", **self.config.to_dict()}

    def slice(self, width_multiplier: float) -> "ResNet":
        """Brute-force width slicing (the doubly nested paper's Figure 4
        baseline): a narrower ResNet whose every layer keeps the first
        channels of this one's, weights and batch-norm statistics copied, no
        retraining.  A dense network was not trained for it, so its narrow
        slices are expected to be poor; ``fine_tune_classifier`` retrains
        only the last layer on top."""
        narrow = ResNet(ResNetConfig(**{**self.config.to_dict(), "width_multiplier":
                                        width_multiplier * self.config.width_multiplier,
                                        "stage_widths": tuple(self.config.stage_widths),
                                        "mean": tuple(self.config.mean), "std": tuple(self.config.std)}))
        source = dict(self.named_modules())
        with torch.no_grad():
            for name, module in narrow.named_modules():
                original = source[name]
                if isinstance(module, nn.Conv2d):
                    out_c, in_c = module.weight.shape[:2]
                    module.weight.copy_(original.weight[:out_c, :in_c])
                elif isinstance(module, nn.BatchNorm2d):
                    c = module.num_features
                    for attr in ("weight", "bias", "running_mean", "running_var"):
                        getattr(module, attr).copy_(getattr(original, attr)[:c])
                elif isinstance(module, nn.Linear):
                    module.weight.copy_(original.weight[:, : module.in_features])
                    module.bias.copy_(original.bias)
        return narrow.train(self.training)
