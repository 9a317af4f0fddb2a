"""Dense ReLU networks of the paper (Table 1: one hidden layer with biases; Table 2: deep, bias-free).

The ``state_dict`` keys match the reference implementation, so checkpoints move between the two:
``fc.{0,2}.{weight,bias}`` for the one-hidden-layer nets and ``linear_layers.{i}.weight`` for the
bias-free ones. The input size follows the data set (784 for MNIST-like, 3072 for CIFAR, 64 for
Digits); the reference's sizes are the defaults. The reference's ``forward(x, N)`` returns the
output of hidden layer ``N``, i.e. the features entering layer ``N + 1`` (``reference_offset``).
"""
from torch import nn

from .architecture import Architecture, ChainNet, Layer, chain_groups


def dense_chain(keys):
    """Dense layers with ReLU after every one but the last; ``keys`` are ``(weight, bias)`` pairs."""
    last = len(keys) - 1
    return tuple(Layer("dense", w, b, () if l == last else ("relu",)) for l, (w, b) in enumerate(keys))


class LinearOneLayer(ChainNet):
    """One hidden ReLU layer with biases: ``fc = Sequential(Linear, ReLU, Linear)`` (paper, Table 1)."""

    hidden = 2000

    def __init__(self, num_classes=10, input_dim=784):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(input_dim, self.hidden), nn.ReLU(),
                                nn.Linear(self.hidden, num_classes))

    def describe(self):
        layers = dense_chain([("fc.0.weight", "fc.0.bias"), ("fc.2.weight", "fc.2.bias")])
        return Architecture(layers, chain_groups(self, layers), reference_offset=1)


class LinearOneLayer100(LinearOneLayer):
    """Hidden width 100 (CIFAR input by default)."""
    hidden = 100

    def __init__(self, num_classes=10, input_dim=3072):
        super().__init__(num_classes, input_dim)


class LinearOneLayer500(LinearOneLayer100):
    """Hidden width 500."""
    hidden = 500


class LinearOneLayer1000(LinearOneLayer100):
    """Hidden width 1000."""
    hidden = 1000


class LinearOneLayer2000(LinearOneLayer100):
    """Hidden width 2000."""
    hidden = 2000


class LinearNoBias(ChainNet):
    """Bias-free ReLU MLP ``linear_layers.{i}`` (paper, Table 2 and Section 6)."""

    hidden = ()

    def __init__(self, num_classes=10, input_dim=3072):
        super().__init__()
        widths = [input_dim, *self.hidden, num_classes]
        self.linear_layers = nn.ModuleList(
            nn.Linear(a, b, bias=False) for a, b in zip(widths[:-1], widths[1:]))

    def describe(self):
        layers = dense_chain([(f"linear_layers.{i}.weight", None) for i in range(len(self.linear_layers))])
        return Architecture(layers, chain_groups(self, layers), reference_offset=1)


class Linear3NoBias(LinearNoBias):
    """Three bias-free layers, hidden widths 6144, 2000."""
    hidden = (6144, 2000)


class Linear5NoBias(LinearNoBias):
    """Five bias-free layers, hidden widths 6144, 2000, 1000, 1000."""
    hidden = (6144, 2000, 1000, 1000)


class Linear7NoBias(LinearNoBias):
    """Seven bias-free layers, hidden widths 6144, 2000, 1000 x 4."""
    hidden = (6144, 2000, 1000, 1000, 1000, 1000)
