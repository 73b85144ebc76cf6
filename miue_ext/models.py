"""Surrogate and victim networks, their registry, and the adapter that gives any network a feature output.

REGISTRY maps each `--model` name to its constructor and says whether it may be a surrogate
(`miue generate`, build_model) and/or a victim (`miue evaluate`, evaluate.victims.build_victim).
Every built-in model exposes `forward_features(x) -> [B, D]` and `classifier`.

The generation engine needs two things from a surrogate for every batch: the penultimate
features f (for the MI objectives) and the logits (for the cross-entropy training epoch and
the `ce` objective). `FeatureSurrogate` provides both for three kinds of model:

* the built-in models below, which expose `forward_features` and `classifier`;
* any module whose forward returns a `(features, logits)` tuple;
* any module that returns logits, when the user names the layer whose output is the
  feature vector (a forward hook captures it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
import torch.nn.functional as F

from miue_ext.errors import InputError


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
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

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


class ResNet10(nn.Module):
    """ResNet-18's CIFAR stem and four stages with one BasicBlock each, channels 32-64-128-256:
    a residual network (strided convolutions, shortcuts) unlike the VGG-style `smallcnn`
    surrogate, cheap enough for two CPU cores. A victim only."""

    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 32):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        blocks, in_planes = [], width
        for planes, stride in zip((width, 2 * width, 4 * width, 8 * width), (1, 2, 2, 2)):
            blocks.append(BasicBlock(in_planes, planes, stride))
            in_planes = planes
        self.blocks = nn.Sequential(*blocks)
        self.feature_dim = in_planes
        self.classifier = nn.Linear(in_planes, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(F.relu(self.bn1(self.conv1(x)))).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x))


VGG11_LAYOUT = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG11(nn.Module):
    """VGG-11 with batch norm (CIFAR variant, 512-d features): the default victim on CUDA, where
    the default surrogate is ResNet-18. A victim only."""

    def __init__(self, num_classes: int, in_channels: int = 3):
        super().__init__()
        layers, channels = [], in_channels
        for item in VGG11_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(channels, item, 3, 1, 1, bias=False), nn.BatchNorm2d(item), nn.ReLU(inplace=True)]
                channels = item
        self.features = nn.Sequential(*layers)
        self.feature_dim = channels
        self.classifier = nn.Linear(channels, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        # mean over what is left of H, W: works for any input size that survives 5 poolings
        return self.features(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x))


class PlainCNN(nn.Module):
    """A second family: a VGG-style CNN with no batch norm and with dropout (channels 32-64-128,
    two 3x3 convolutions per stage, a 256-unit hidden layer). Batch-norm statistics are one route
    by which a poison can steer a victim, so a poison should be judged on a model without them
    too; it needs a smaller learning rate, a warm-up and gradient clipping to train reliably
    (evaluate/victims.py: DEFAULT_LR, DEFAULT_WARMUP_EPOCHS, DEFAULT_MAX_GRAD_NORM). A victim only."""

    def __init__(self, num_classes: int, in_channels: int = 3, hidden: int = 256):
        super().__init__()
        layers, channels = [], in_channels
        for width in (32, 64, 128):
            layers += [
                nn.Conv2d(channels, width, 3, 1, 1),
                nn.ReLU(inplace=True),
                nn.Conv2d(width, width, 3, 1, 1),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
                nn.Dropout(0.25),
            ]
            channels = width
        self.features = nn.Sequential(*layers)
        self.hidden = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True))
        self.dropout = nn.Dropout(0.5)
        self.feature_dim = hidden
        self.classifier = nn.Linear(hidden, num_classes)
        # He initialisation: without batch norm, PyTorch's default (a smaller variance) shrinks
        # the signal through six ReLU convolutions and the network barely starts to learn.
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.hidden(self.features(x).mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.forward_features(x)))


# --- the registry: every built-in network by its --model name -------------------------------------
@dataclass(frozen=True)
class ModelEntry:
    build: Callable[[int, int], nn.Module]  # build(num_classes, in_channels)
    surrogate: bool  # `miue generate --model NAME` may use it
    victim: bool  # `miue evaluate --model NAME` (and `miue mi`) may use it


# In the order the help texts and error messages list the names.
REGISTRY: dict[str, ModelEntry] = {
    "resnet10": ModelEntry(ResNet10, surrogate=False, victim=True),
    "plaincnn": ModelEntry(PlainCNN, surrogate=False, victim=True),
    "vgg11": ModelEntry(VGG11, surrogate=False, victim=True),
    "resnet18": ModelEntry(ResNet18, surrogate=True, victim=True),
    "smallcnn": ModelEntry(SmallCNN, surrogate=True, victim=True),
}
MODEL_NAMES = tuple(name for name, entry in REGISTRY.items() if entry.surrogate)  # the surrogates
VICTIM_NAMES = tuple(name for name, entry in REGISTRY.items() if entry.victim)
# --model auto: by default a poison is judged on an architecture it was not optimised against.
DEFAULT_SURROGATE = {"cpu": "smallcnn", "cuda": "resnet18"}
DEFAULT_VICTIM = {"cpu": "resnet10", "cuda": "vgg11"}


def build_registered(name: str, names: tuple[str, ...], num_classes: int, in_channels: int = 3) -> nn.Module:
    """The registered network `name`, which must be one of `names` (MODEL_NAMES or VICTIM_NAMES)."""
    if name not in names:
        raise InputError(f"unknown model {name!r}; choose one of {', '.join(names)}")
    return REGISTRY[name].build(num_classes, in_channels)


def build_model(name: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    """A surrogate for generation (MODEL_NAMES)."""
    return build_registered(name, MODEL_NAMES, num_classes, in_channels)


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
                raise InputError(f"model {type(model).__name__} has no layer named {feature_layer!r}") from None
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
                f"surrogate {type(self.model).__name__} must return (features, logits) or be given a feature layer name"
            )
        features, logits = out
        return torch.flatten(features, 1), logits
