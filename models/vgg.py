"""VGG16 without BatchNorm, as used for the paper's Table 3 and WA(n) ensembles.

Keys match the reference: ``layer_blocks.{b}.{i}.{weight,bias}`` for the 13 convolutions and
``classifier.{1,4,6}.{weight,bias}`` for the three dense layers.
"""
import math

from torch import nn
import torch.nn.functional as F

BLOCKS = ([64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512])
POOL_AFTER = (1, 3, 6, 9, 12)  # the last conv layer of each block


class VGG16(nn.Module):
    """VGG16: five blocks of 3x3 conv + ReLU, max-pool 2 after each block, then a 3-layer classifier.

    Layers are counted 0..15 (13 convolutions, then the 3 dense layers); ``forward(x, N)`` returns
    the *input* of layer ``N`` (after the previous ReLU and pooling), the feature map used by weight
    adjustment (METHODS.md, section VGG16).
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

    @property
    def layers(self):
        """The 16 weight layers in order: 13 convolutions, then the 3 dense layers."""
        return [conv for block in self.layer_blocks for conv in block] + \
            [self.classifier[1], self.classifier[4], self.classifier[6]]

    def layer_step(self, i, x, W, b):
        """Apply layer ``i`` with weights ``W, b`` to its input ``x``; returns the input of layer
        ``i + 1`` (ReLU, then the block's max-pool and the flattening where they follow), or the
        logits for the last layer. Dropout acts before layers 13 and 14 in training mode."""
        if i < 13:
            x = F.relu(F.conv2d(x, W, b, padding=1))
            if i in POOL_AFTER:
                x = F.max_pool2d(x, 2)
            return x.flatten(1) if i == 12 else x
        x = F.linear(F.dropout(x, 0.5, self.training) if i < 15 else x, W, b)
        return x if i == 15 else F.relu(x)

    def forward(self, x, N=-1):
        """Logits, or the input of layer ``N`` when ``0 <= N < 16``."""
        return self._run(x, 0, N if N >= 0 else 16)

    def forward_from(self, h, N):
        """Continue from ``h``, the input of layer ``N``: ``forward_from(forward(x, N), N) == forward(x)``."""
        return self._run(h, N, 16)

    def _run(self, x, start, stop):
        for i, layer in enumerate(self.layers[start:stop], start):
            x = self.layer_step(i, x, layer.weight, layer.bias)
        return x

    def weight_index(self, N):
        """Index in ``parameters()`` of the weight that takes ``forward(x, N)`` (layer ``N``'s)."""
        return 2 * N

    @staticmethod
    def input_index(j):
        """``N`` such that ``forward(x, N)`` is the input of layer ``j``."""
        return j

    wa_layers = tuple(range(1, 16))  # layers whose input differs between two nets
