"""Dense ReLU networks of the paper (Table 1: one hidden layer with biases; Table 2: deep, bias-free).

The ``state_dict`` keys match the reference implementation, so checkpoints move between the two:
``fc.{0,2}.{weight,bias}`` for the one-hidden-layer nets and ``linear_layers.{i}.weight`` for the
bias-free ones. The input size follows the data set (784 for MNIST-like, 3072 for CIFAR, 64 for
Digits); the reference's sizes are the defaults.
"""
import torch
import torch.nn.functional as F
from torch import nn


def hidden_layer_step(i, x, W, b):
    """The input of layer ``i + 1`` from the input ``x`` of hidden layer ``i``, given its weights."""
    return torch.relu(F.linear(x.flatten(1), W, b))


def input_index(j):
    """``N`` such that ``forward(x, N)`` (a hidden layer's output) is the input of layer ``j``."""
    return j - 1


class LinearOneLayer(nn.Module):
    """One hidden ReLU layer with biases: ``fc = Sequential(Linear, ReLU, Linear)`` (paper, Table 1)."""

    hidden = 2000

    def __init__(self, num_classes=10, input_dim=784):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(input_dim, self.hidden), nn.ReLU(),
                                nn.Linear(self.hidden, num_classes))

    def forward(self, x, N=-1):
        """Logits, or the hidden features after the ReLU when ``N == 0``."""
        h = self.fc[1](self.fc[0](x.flatten(1)))
        return h if N == 0 else self.fc[2](h)

    def forward_from(self, h, N=0):
        """Logits from the hidden features ``h`` (the output of hidden layer 0 after its ReLU)."""
        return self.fc[2](h)

    wa_layers = (0,)  # hidden layers whose output can feed weight adjustment

    layer_step = staticmethod(hidden_layer_step)
    input_index = staticmethod(input_index)

    def weight_index(self, N):
        """Index in ``parameters()`` of the weight that takes ``forward(x, N)``."""
        return 2


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


class LinearNoBias(nn.Module):
    """Bias-free ReLU MLP ``linear_layers.{i}`` (paper, Table 2 and Section 6)."""

    hidden = ()

    def __init__(self, num_classes=10, input_dim=3072):
        super().__init__()
        widths = [input_dim, *self.hidden, num_classes]
        self.linear_layers = nn.ModuleList(
            nn.Linear(a, b, bias=False) for a, b in zip(widths[:-1], widths[1:]))

    def forward(self, x, N=-1):
        """Logits, or the output of hidden layer ``N`` after its ReLU when ``N >= 0``."""
        x = x.flatten(1)
        for i, layer in enumerate(self.linear_layers[:-1]):
            x = torch.relu(layer(x))
            if i == N:
                return x
        return self.linear_layers[-1](x)

    def forward_from(self, h, N):
        """Continue the forward pass from the output of hidden layer ``N`` (after its ReLU)."""
        for layer in self.linear_layers[N + 1:-1]:
            h = torch.relu(layer(h))
        return self.linear_layers[-1](h)

    layer_step = staticmethod(hidden_layer_step)
    input_index = staticmethod(input_index)

    @property
    def wa_layers(self):
        """Hidden layers whose output can feed weight adjustment."""
        return tuple(range(len(self.hidden)))

    def weight_index(self, N):
        """Index in ``parameters()`` of the weight that takes ``forward(x, N)``."""
        return N + 1


class Linear3NoBias(LinearNoBias):
    """Three bias-free layers, hidden widths 6144, 2000."""
    hidden = (6144, 2000)


class Linear5NoBias(LinearNoBias):
    """Five bias-free layers, hidden widths 6144, 2000, 1000, 1000."""
    hidden = (6144, 2000, 1000, 1000)


class Linear7NoBias(LinearNoBias):
    """Seven bias-free layers, hidden widths 6144, 2000, 1000 x 4."""
    hidden = (6144, 2000, 1000, 1000, 1000, 1000)
