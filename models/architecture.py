"""Architecture descriptions: what the point finders, the WA(n) ensembles and permutation methods
may know about a network, declared once per model as data (docs/METHODS.md, "Architecture
descriptions").

A description has two parts:

* ``layers``: the chain of weight layers from the input to the logits, each a ``Layer`` (dense or
  3x3 conv, its ``state_dict`` keys, what follows it). Empty for a network that is not a chain
  (``PreResNet110``: its blocks add a shortcut). The one convention for features: **the features
  entering layer ``l``** are the input of layer ``l`` (after the previous layer's ReLU, pooling and
  flattening); ``ChainNet.features(x, l)`` computes them and ``ChainNet.forward_from(h, l)``
  continues from them to the logits.
* ``groups``: the hidden units that can be permuted without changing the network's function, each
  a ``UnitGroup`` listing every ``(state_dict key, axis)`` that a permutation of its units touches,
  BatchNorm parameters and running statistics included. Units tied by a residual stream form one
  group.

A finder fits a model when the description has what the finder needs (``FAMILIES``), never because
of the model's class.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Layer:
    """One weight layer of a chain.

    ``kind`` is "dense" (its input is flattened first) or "conv" (3x3, padding 1); ``weight`` and
    ``bias`` are ``state_dict`` keys (``bias`` None without one); ``after`` lists what follows, in
    order, from "relu", "maxpool" (2x2) and "flatten"; ``dropout`` is the probability of the
    dropout that acts on the layer's input in training mode.
    """
    kind: str
    weight: str
    bias: str = None
    after: tuple = ("relu",)
    dropout: float = 0.0


@dataclass(frozen=True)
class UnitGroup:
    """Hidden units permuted together: ``size`` units, and every ``(state_dict key, axis)`` along
    which a permutation of them must be applied for the network to compute the same function.

    ``probes`` say where the units can be observed on data, for a network that is not a chain:
    ``(module name, "input" or "output")`` pairs whose tensors carry the units along axis 1 (a
    chain's units are observed as the outputs of their layer, ``ChainNet.unit_activations``)."""
    name: str
    size: int
    axes: tuple
    probes: tuple = ()


def unit_rows(tensor):
    """A tensor with units along axis 1 as ``(samples x positions, units)`` rows."""
    return tensor.movedim(1, -1).reshape(-1, tensor.shape[1])


@dataclass(frozen=True)
class Architecture:
    """A model's ``layers`` (the chain, empty if it is not one), its hidden-unit ``groups``, and
    ``reference_offset``: the reference's ``forward(x, N)`` returns the features entering layer
    ``N + reference_offset`` (1 for the dense nets, whose ``N`` counts hidden layers; 0 for VGG16)."""
    layers: tuple
    groups: tuple
    reference_offset: int = 0

    @property
    def has_bias(self):
        return bool(self.layers) and all(layer.bias is not None for layer in self.layers)

    @property
    def kinds(self):
        return {layer.kind for layer in self.layers}

    def adjustable_layers(self):
        """Layers ``l`` whose input comes from a hidden layer (``1 .. L-1``): those weight
        adjustment can re-fit."""
        return range(1, len(self.layers))


def linear_part(layer, x, W, b=None, training=False):
    """Layer ``layer``'s affine map alone (before what follows it) with weights ``W, b`` on its
    input ``x``. ``W`` and ``b`` may have fewer output units than the layer (one: a mean neuron,
    docs/METHODS.md "Evaluating a path segment by segment"); the result then broadcasts against
    the layer's outputs."""
    fused = b is None or b.shape[0] == W.shape[0]
    bias = b if fused else None
    if layer.kind == "dense":
        x = x.flatten(1)
        z = F.linear(F.dropout(x, layer.dropout, training) if layer.dropout else x, W, bias)
    else:
        z = F.conv2d(x, W, bias, padding=1)
    return z if fused else z + b.view(1, -1, *([1] * (z.dim() - 2)))


def after(layer, z, flatten=True):
    """What follows layer ``layer``'s affine map (ReLU, pooling, flattening unless ``flatten`` is
    False), applied to ``z``."""
    for op in layer.after:
        if op == "relu":
            z = torch.relu(z)
        elif op == "maxpool":
            z = F.max_pool2d(z, 2)
        elif flatten:
            z = z.flatten(1)
    return z


def apply_layer(layer, x, W, b, training=False):
    """Layer ``layer`` with weights ``W, b`` on its input ``x``: the features entering the next
    layer (or the logits, for the last)."""
    return after(layer, linear_part(layer, x, W, b, training))


def chain_groups(model, layers):
    """The hidden units of a chain: layer ``l``'s outputs (rows of its weight and bias) are the
    inputs (columns, or input channels) of layer ``l + 1``."""
    shapes = {key: value.shape for key, value in model.state_dict().items()}
    groups = []
    for l, (layer, following) in enumerate(zip(layers[:-1], layers[1:])):
        axes = ((layer.weight, 0),) + (((layer.bias, 0),) if layer.bias else ()) + ((following.weight, 1),)
        groups.append(UnitGroup(f"layer {l}", shapes[layer.weight][0], axes))
    return tuple(groups)


def permute(state, groups, perms):
    """A copy of ``state`` (a ``state_dict``) with each group's units permuted: ``perms[name]``
    (a permutation of ``range(size)``) applied along every axis the group touches."""
    state = dict(state)
    for group in groups:
        if group.name in perms:
            perm = perms[group.name].to(next(iter(state.values())).device)
            for key, axis in group.axes:
                state[key] = state[key].index_select(axis, perm)
    return state


#: what the finders need of a description, by the name the procedure table uses
FAMILIES = {
    "any network": lambda a: True,
    "one hidden dense layer with biases": lambda a: len(a.layers) == 2 and a.kinds == {"dense"}
    and a.has_bias,
    "dense layers without biases": lambda a: len(a.layers) >= 2 and a.kinds == {"dense"}
    and not any(layer.bias for layer in a.layers),
    "a chain of convolutions with biases": lambda a: "conv" in a.kinds and a.has_bias,
    "a network with hidden-unit groups": lambda a: bool(a.groups),
}


class Described(nn.Module):
    """A network with an architecture description (``describe``, computed once per instance)."""

    def describe(self):
        """The ``Architecture`` of this network."""
        raise NotImplementedError

    def unit_activations(self, x):
        """Each hidden-unit group's activations on input ``x`` as ``unit_rows`` (one row per
        sample, position and probe), observed where the group's ``probes`` say."""
        seen, handles = {}, []
        for group in self.architecture.groups:
            for name, where in group.probes:
                def hook(module, args, output, group=group.name, where=where):
                    seen.setdefault(group, []).append(unit_rows(args[0] if where == "input" else output))
                handles.append(self.get_submodule(name).register_forward_hook(hook))
        try:
            self(x)
        finally:
            for handle in handles:
                handle.remove()
        return {name: torch.cat(rows) for name, rows in seen.items()}

    @property
    def architecture(self):
        if "_architecture" not in self.__dict__:
            self.__dict__["_architecture"] = self.describe()
        return self.__dict__["_architecture"]


class ChainNet(Described):
    """A network that is a chain of weight layers, run from its description."""

    def step(self, l, x, W, b):
        """Layer ``l`` with weights ``W, b`` on the features entering it."""
        return apply_layer(self.architecture.layers[l], x, W, b, self.training)

    def tensor(self, key):
        """The tensor at ``state_dict`` key ``key`` as the module holds it now (a parameter, or a
        tensor put in its place, e.g. by ``torch.func.functional_call``)."""
        owner, _, name = key.rpartition(".")
        return getattr(self.get_submodule(owner), name)

    def run(self, x, start, stop):
        """From the features entering layer ``start`` to those entering layer ``stop``."""
        for l in range(start, stop):
            layer = self.architecture.layers[l]
            x = self.step(l, x, self.tensor(layer.weight),
                          self.tensor(layer.bias) if layer.bias else None)
        return x

    def features(self, x, l):
        """The features entering layer ``l`` for input ``x``."""
        return self.run(x, 0, l)

    def forward_from(self, h, l):
        """The logits from ``h``, the features entering layer ``l``."""
        return self.run(h, l, len(self.architecture.layers))

    def unit_activations(self, x):
        """Hidden layer ``l``'s outputs after its ReLU (and pooling, before flattening) on input
        ``x``, as ``unit_rows``, for each group ``layer l``."""
        layers, seen = self.architecture.layers, {}
        for group, l in zip(self.architecture.groups, range(len(layers) - 1)):
            layer = layers[l]
            z = linear_part(layer, x, self.tensor(layer.weight),
                            self.tensor(layer.bias) if layer.bias else None, self.training)
            x = after(layer, z, flatten=False)
            seen[group.name] = unit_rows(x)
        return seen

    def forward(self, x, N=-1):
        """Logits, or (the reference's call) for ``N >= 0`` the features entering layer
        ``N + architecture.reference_offset``."""
        if N < 0:
            return self.forward_from(x, 0)
        return self.features(x, N + self.architecture.reference_offset)
