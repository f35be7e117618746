"""ResNet-50/101/152 and VGG16 trunks laid out as cirtorch's ``features`` so its checkpoints load.

cirtorch (Radenovic et al.) stores ``{'meta': {...}, 'state_dict': {'features.*', 'pool.p', 'whiten.*'}}``
where ``features`` is torchvision's network without its classifier: for ResNet the children
conv1, bn1, relu, maxpool, layer1-4 (indices 0-7); for VGG16 ``features`` without its last max pool.
"""
from torch import nn

RESNET_LAYERS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3), "resnet152": (3, 8, 36, 3)}
VGG16_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
OUTPUT_DIMS = {**{name: 2048 for name in RESNET_LAYERS}, "vgg16": 512}
ARCHITECTURES = tuple(OUTPUT_DIMS)


class Bottleneck(nn.Module):
    """torchvision's ResNet bottleneck (stride on the 3x3 convolution)."""

    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int = 1):
        super().__init__()
        out_ch = width * self.expansion
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.relu(self.bn3(self.conv3(y)) + identity)


def resnet_features(architecture: str) -> nn.Sequential:
    """ResNet trunk without average pool and classifier: (N, 3, H, W) -> (N, 2048, H/32, W/32)."""
    layers = [nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
              nn.MaxPool2d(3, stride=2, padding=1)]
    in_ch = 64
    for stage, (blocks, width) in enumerate(zip(RESNET_LAYERS[architecture], (64, 128, 256, 512))):
        stage_blocks = []
        for b in range(blocks):
            stage_blocks.append(Bottleneck(in_ch, width, stride=2 if b == 0 and stage > 0 else 1))
            in_ch = width * Bottleneck.expansion
        layers.append(nn.Sequential(*stage_blocks))
    return nn.Sequential(*layers)


def vgg16_features() -> nn.Sequential:
    """VGG16 convolutional layers without the last max pool: (N, 3, H, W) -> (N, 512, H/16, W/16)."""
    layers, in_ch = [], 3
    for item in VGG16_CONFIG:
        if item == "M":
            layers.append(nn.MaxPool2d(2, stride=2))
        else:
            layers += [nn.Conv2d(in_ch, item, 3, padding=1), nn.ReLU(inplace=True)]
            in_ch = item
    return nn.Sequential(*layers)


def build_features(architecture: str) -> nn.Sequential:
    """The cirtorch ``features`` module of a named architecture."""
    if architecture in RESNET_LAYERS:
        return resnet_features(architecture)
    if architecture == "vgg16":
        return vgg16_features()
    raise ValueError(f"unsupported cirtorch architecture {architecture!r}; supported: {', '.join(ARCHITECTURES)}")
