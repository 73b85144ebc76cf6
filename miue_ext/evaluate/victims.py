"""Victim networks for `miue evaluate`: the generation models plus two that no default
surrogate uses, so that by default a poison is always judged on an architecture it was not
optimised against.

    resnet10   ResNet-18's CIFAR stem and four stages with one BasicBlock each, channels
               32-64-128-256: a residual network (strided convolutions, shortcuts) unlike
               the VGG-style `smallcnn` surrogate, cheap enough for two CPU cores.
    vgg11      VGG-11 with batch norm (CIFAR variant, 512-d features): the default victim on
               CUDA, where the default surrogate is ResNet-18.
    plaincnn   a second family: a VGG-style CNN with no batch norm and with dropout (channels
               32-64-128, two 3x3 convolutions per stage, a 256-unit hidden layer). Without
               batch norm it needs a smaller learning rate (0.03 by default, see
               DEFAULT_LR); batch-norm statistics are one route by which a poison can steer a
               victim, so a poison should be judged on a model without them too.
    resnet18, smallcnn   as in miue_ext.models.

Every model exposes `forward_features(x) -> [B, D]` and `classifier`, so the MI analysis can
read its penultimate features.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from miue_ext.errors import InputError
from miue_ext.models import BasicBlock, build_model

VICTIM_NAMES = ("resnet10", "plaincnn", "vgg11", "resnet18", "smallcnn")
DEFAULT_VICTIM = {"cpu": "resnet10", "cuda": "vgg11"}  # the generators' defaults are smallcnn / resnet18
# SGD learning rate when --lr is not given. A network without batch norm needs a smaller one;
# plaincnn on clean patches, 30 epochs: 70.6% at 0.03, 67.4% at 0.01 (docs/evaluation.md).
DEFAULT_LR = {"plaincnn": 0.03}
STANDARD_LR = 0.1


class ResNet10(nn.Module):
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
    def __init__(self, num_classes: int, in_channels: int = 3, hidden: int = 256):
        super().__init__()
        layers, channels = [], in_channels
        for width in (32, 64, 128):
            layers += [nn.Conv2d(channels, width, 3, 1, 1), nn.ReLU(inplace=True),
                       nn.Conv2d(width, width, 3, 1, 1), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2), nn.Dropout(0.25)]
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


def default_lr(name: str) -> float:
    return DEFAULT_LR.get(name, STANDARD_LR)


def build_victim(name: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    if name == "resnet10":
        return ResNet10(num_classes, in_channels)
    if name == "vgg11":
        return VGG11(num_classes, in_channels)
    if name == "plaincnn":
        return PlainCNN(num_classes, in_channels)
    if name in ("resnet18", "smallcnn"):
        return build_model(name, num_classes, in_channels)
    raise InputError(f"unknown model {name!r}; choose one of {', '.join(VICTIM_NAMES)}")


def default_victim(device_type: str) -> str:
    return DEFAULT_VICTIM["cuda" if device_type == "cuda" else "cpu"]
