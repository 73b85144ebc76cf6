"""Surrogate and victim networks, and the adapter that gives any network a feature output.

The generation engine needs two things from a surrogate for every batch: the penultimate
features f (for the MI objectives) and the logits (for the cross-entropy training epoch and
the `ce` objective). `FeatureSurrogate` provides both for three kinds of model:

* the built-in models below, which expose `forward_features` and `classifier`;
* any module whose forward returns a `(features, logits)` tuple;
* any module that returns logits, when the user names the layer whose output is the
  feature vector (a forward hook captures it).
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from miue_ext.errors import InputError

MODEL_NAMES = ("resnet18", "smallcnn")


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 with the CIFAR stem (3x3 conv, stride 1, no max-pool), as the authors use.

    Features are the 512-d vector after global average pooling.
    """

    feature_dim = 512

    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        widths, strides = (64, 128, 256, 512), (1, 2, 2, 2)
        in_planes = 64
        layers = []
        for planes, stride in zip(widths, strides):
            layers.append(nn.Sequential(BasicBlock(in_planes, planes, stride), BasicBlock(planes, planes)))
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.classifier = nn.Linear(512, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        # mean over H, W rather than AdaptiveAvgPool2d: its CUDA backward is not deterministic
        return out.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x))


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    """A four-stage VGG-style CNN: about 30x cheaper than ResNet-18, the default on a CPU.

    Features are the `width * 8`-d vector after global average pooling.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 16):
        super().__init__()
        self.feature_dim = width * 8
        self.stem = _conv_bn_relu(in_channels, width)
        self.stage1 = nn.Sequential(_conv_bn_relu(width, width * 2), nn.MaxPool2d(2))
        self.stage2 = nn.Sequential(_conv_bn_relu(width * 2, width * 4), nn.MaxPool2d(2))
        self.stage3 = nn.Sequential(_conv_bn_relu(width * 4, width * 8), nn.MaxPool2d(2))
        self.classifier = nn.Linear(width * 8, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stage3(self.stage2(self.stage1(self.stem(x))))
        # mean over H, W rather than AdaptiveAvgPool2d: its CUDA backward is not deterministic
        return out.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x))


def build_model(name: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    if name == "resnet18":
        return ResNet18(num_classes, in_channels)
    if name == "smallcnn":
        return SmallCNN(num_classes, in_channels)
    raise InputError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")


class FeatureSurrogate(nn.Module):
    """Wraps a network so that `forward(x)` returns `(features [B, D], logits [B, C])`."""

    def __init__(self, model: nn.Module, feature_layer: str | None = None):
        super().__init__()
        self.model = model
        self.feature_layer = feature_layer
        self._captured: torch.Tensor | None = None
        if feature_layer is not None:
            try:
                layer = model.get_submodule(feature_layer)
            except AttributeError:
                raise InputError(
                    f"model {type(model).__name__} has no layer named {feature_layer!r}"
                ) from None
            layer.register_forward_hook(self._capture)

    def _capture(self, module: nn.Module, inputs, output: torch.Tensor) -> None:
        self._captured = output

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.feature_layer is not None:
            logits = self.model(x)
            features, self._captured = self._captured, None
            return torch.flatten(features, 1), logits
        if hasattr(self.model, "forward_features") and hasattr(self.model, "classifier"):
            features = self.model.forward_features(x)
            return features, self.model.classifier(features)
        out = self.model(x)
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise InputError(
                f"surrogate {type(self.model).__name__} must return (features, logits) "
                "or be given a feature layer name"
            )
        features, logits = out
        return torch.flatten(features, 1), logits
