"""A compact pure-torch mirror of torchvision's ResNet (v1.5: the stride of a
Bottleneck is on its 3x3 conv), with torchvision's module names and hence
its state_dict keys (conv1, bn1, layer1.0.conv1, ..., layerN.0.downsample.0/.1,
fc). tests/test_convert.py uses it where torchvision cannot be imported (its
wheel must match the installed torch exactly)."""

import torch
from torch import nn

STAGES = {18: ((2, 2, 2, 2), False), 34: ((3, 4, 6, 3), False), 50: ((3, 4, 6, 3), True),
          101: ((3, 4, 23, 3), True), 152: ((3, 8, 36, 3), True)}


def _conv(cin, cout, kernel, stride=1):
    return nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, width, stride, downsample):
        super().__init__()
        self.conv1, self.bn1 = _conv(cin, width, 3, stride), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = _conv(width, width, 3), nn.BatchNorm2d(width)
        self.relu, self.downsample = nn.ReLU(inplace=True), downsample

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(y + shortcut)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, width, stride, downsample):
        super().__init__()
        self.conv1, self.bn1 = _conv(cin, width, 1), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = _conv(width, width, 3, stride), nn.BatchNorm2d(width)
        self.conv3 = _conv(width, width * 4, 1)
        self.bn3 = nn.BatchNorm2d(width * 4)
        self.relu, self.downsample = nn.ReLU(inplace=True), downsample

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(y + shortcut)


class ResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int = 1000):
        super().__init__()
        stages, bottleneck = STAGES[depth]
        block = Bottleneck if bottleneck else BasicBlock
        self.conv1 = nn.Conv2d(3, 64, 7, 2, padding=3, bias=False)
        self.bn1, self.relu = nn.BatchNorm2d(64), nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, padding=1)
        cin = 64
        for i, size in enumerate(stages):
            width, blocks = 64 * 2**i, []
            for j in range(size):
                stride = 2 if i > 0 and j == 0 else 1
                downsample = None
                if stride != 1 or cin != width * block.expansion:
                    downsample = nn.Sequential(_conv(cin, width * block.expansion, 1, stride),
                                               nn.BatchNorm2d(width * block.expansion))
                blocks.append(block(cin, width, stride, downsample))
                cin = width * block.expansion
            setattr(self, f'layer{i + 1}', nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet(depth: int, num_classes: int) -> nn.Module:
    """torchvision.models.resnet{depth}(weights=None, num_classes=...), or
    this mirror where torchvision does not import."""
    try:
        import torchvision
    except Exception:  # noqa: BLE001 -- a wheel mismatch raises RuntimeError, not ImportError
        return ResNet(depth, num_classes)
    return getattr(torchvision.models, f'resnet{depth}')(weights=None, num_classes=num_classes)
