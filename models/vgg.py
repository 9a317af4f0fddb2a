"""VGG16 without BatchNorm, as used for the paper's Table 3 and WA(n) ensembles.

Keys match the reference: ``layer_blocks.{b}.{i}.{weight,bias}`` for the 13 convolutions and
``classifier.{1,4,6}.{weight,bias}`` for the three dense layers.
"""
import math

from torch import nn

from .architecture import Architecture, ChainNet, Layer, chain_groups

BLOCKS = ([64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512])
POOL_AFTER = (1, 3, 6, 9, 12)  # the last conv layer of each block


class VGG16(ChainNet):
    """VGG16: five blocks of 3x3 conv + ReLU, max-pool 2 after each block, then a 3-layer classifier.

    Layers are counted 0..15 (13 convolutions, then the 3 dense layers); ``forward(x, N)`` returns
    the features entering layer ``N`` (after the previous ReLU and pooling), the feature map used by
    weight adjustment (docs/METHODS.md, "VGG16"). The dropout of the classifier acts on the inputs
    of layers 13 and 14 in training mode.
    """

    input_size = 32

    def __init__(self, num_classes=10, in_channels=3):
        super().__init__()
        self.layer_blocks = nn.ModuleList()
        channels = in_channels
        for widths in BLOCKS:
            block = nn.ModuleList()
            for width in widths:
                conv = nn.Conv2d(channels, width, kernel_size=3, padding=1)
                nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / (3 * 3 * width)))
                nn.init.zeros_(conv.bias)
                block.append(conv)
                channels = width
            self.layer_blocks.append(block)
        self.classifier = nn.Sequential(
            nn.Dropout(), nn.Linear(512, 512), nn.ReLU(inplace=True),
            nn.Dropout(), nn.Linear(512, 512), nn.ReLU(inplace=True),
            nn.Linear(512, num_classes))

    def describe(self):
        convs = [f"layer_blocks.{b}.{i}" for b, widths in enumerate(BLOCKS) for i in range(len(widths))]
        layers = [Layer("conv", f"{key}.weight", f"{key}.bias",
                        ("relu", "maxpool") if l in POOL_AFTER else ("relu",))
                  for l, key in enumerate(convs)]
        layers[-1] = Layer("conv", layers[-1].weight, layers[-1].bias, ("relu", "maxpool", "flatten"))
        layers += [Layer("dense", f"classifier.{i}.weight", f"classifier.{i}.bias", after, dropout)
                   for i, after, dropout in ((1, ("relu",), 0.5), (4, ("relu",), 0.5), (6, (), 0.0))]
        return Architecture(tuple(layers), chain_groups(self, layers), reference_offset=0)
