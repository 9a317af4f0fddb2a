"""PreResNet110: the pre-activation ResNet for CIFAR (He et al., 2016) listed by the reference.

Depth 110 = 9 * 12 + 2: three stages of 18 basic blocks with 16, 32 and 64 channels.

It is not a chain of layers (every block adds its input to its output), so its description has no
``layers``; its hidden-unit groups are the channels inside each block and, per stage, the channels
of the residual stream, which every block of the stage reads and writes (docs/METHODS.md,
"Architecture descriptions"). Activation matching observes an inner group at the input of its
block's second convolution (after BN and ReLU) and a stream at the output of every block writing
it.
"""
import math

from torch import nn

from .architecture import Architecture, Described, UnitGroup

BATCHNORM = ("weight", "bias", "running_mean", "running_var")


def conv3x3(in_planes, out_planes, stride=1):
    """3x3 convolution with padding 1 and no bias."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class PreActBlock(nn.Module):
    """Basic pre-activation block: BN-ReLU-conv-BN-ReLU-conv plus the (projected) shortcut."""

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False))

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.conv1(self.relu(self.bn1(x)))
        out = self.conv2(self.relu(self.bn2(out)))
        return out + shortcut


class PreResNet110(Described):
    """Pre-activation ResNet of depth 110 with BatchNorm, for 32x32 images."""

    depth = 110
    input_size = 32

    def __init__(self, num_classes=10, in_channels=3):
        super().__init__()
        blocks = (self.depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, kernel_size=3, padding=1, bias=False)
        self.layer1 = self._stage(16, 16, blocks, 1)
        self.layer2 = self._stage(16, 32, blocks, 2)
        self.layer3 = self._stage(32, 64, blocks, 2)
        self.bn = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(8)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @staticmethod
    def _stage(in_planes, planes, blocks, stride):
        layers = [PreActBlock(in_planes, planes, stride)]
        layers += [PreActBlock(planes, planes) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.conv1(x)
        x = self.layer3(self.layer2(self.layer1(x)))
        x = self.avgpool(self.relu(self.bn(x)))
        return self.fc(x.flatten(1))

    def describe(self):
        stages = [getattr(self, f"layer{s}") for s in (1, 2, 3)]
        # what writes (axis 0) or reads (axis 1) a stream, and where its values are seen
        groups, stream, seen = [], [("conv1.weight", 0)], [("conv1", "output")]
        for s, stage in enumerate(stages, 1):
            for b, block in enumerate(stage):
                key = f"layer{s}.{b}"
                stream += [(f"{key}.bn1.{p}", 0) for p in BATCHNORM] + [(f"{key}.conv1.weight", 1)]
                if block.downsample is not None:  # the block reads the old stream, writes a new one
                    stream += [(f"{key}.downsample.0.weight", 1)]
                    groups.append(self._stream_group(s - 1, stream, block.conv1.in_channels, seen))
                    stream, seen = [(f"{key}.downsample.0.weight", 0)], []
                stream += [(f"{key}.conv2.weight", 0)]
                seen += [(key, "output")]
                inner = [(f"{key}.conv1.weight", 0)] + [(f"{key}.bn2.{p}", 0) for p in BATCHNORM]
                groups.append(UnitGroup(f"{key} inner", block.conv1.out_channels,
                                        tuple(inner + [(f"{key}.conv2.weight", 1)]),
                                        ((f"{key}.conv2", "input"),)))
        stream += [(f"bn.{p}", 0) for p in BATCHNORM] + [("fc.weight", 1)]
        groups.append(self._stream_group(3, stream, self.fc.in_features, seen))
        return Architecture((), tuple(groups))

    @staticmethod
    def _stream_group(stage, axes, size, probes):
        """The residual stream of ``stage`` (the stem's output is stage 1's), observed at the
        outputs of the stem or blocks that write it (``probes``)."""
        return UnitGroup(f"stage {stage} stream", size, tuple(axes), tuple(probes))
