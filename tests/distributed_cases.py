"""Computations that must give the single-process numbers under ``torchrun``
(tests/test_distributed.py): every kind of point finder (activation matching's statistics summed
over the ranks), repaired points (REPAIR's moments summed over the ranks), a VGG16 finder,
PreResNet110 with its BatchNorm statistics recomputed, also after activation matching, WA(n)
weights and ensemble accuracy, all in float64 on data sizes that 2 does not divide. ``compute()``
in one process; as a script under ``torchrun`` rank 0 saves the same arrays to the ``.npz`` named
by its argument."""
import sys

import numpy as np
import torch

import data
import distributed
import evaluation
import models
import point_finders
import wa_ensemble
from point_finders.repair import Repaired
from test_point_finders import Tiny3NoBias, Tiny5NoBias, TinyOneLayer, tiny_pair

#: (finder, tiny net, fractions of the path's length at which the point is evaluated)
FINDERS = [("PointFinderSimultaneous", Tiny3NoBias, (0.3,)),
           ("PointFinderStepWiseButterfly", Tiny3NoBias, (0.2, 0.75)),
           ("PointFinderStepWiseInverse", Tiny5NoBias, (0.3, 0.7)),
           ("PointFinderStepWiseTransportation", Tiny3NoBias, (0.6,)),
           ("PointFinderStepWiseInverseOT", Tiny3NoBias, (0.45, 0.9)),
           ("PointFinderInverseWithBiasOT", TinyOneLayer, (0.25, 0.8)),
           ("WeightMatching", Tiny3NoBias, (0.4,)),
           ("ActivationMatching", Tiny3NoBias, (0.4,))]
#: finders whose points are repaired (REPAIR: moments summed over the ranks), as ``FINDERS``
REPAIRED = [("WeightMatching", TinyOneLayer, (0.4,)), ("PointFinderSimultaneous", Tiny3NoBias, (0.7,))]
BATCH = 500  # several batches of Digits' 1437 training and 360 test images


def flat(params):
    return torch.cat([p.reshape(-1) for p in params])


def point_arrays(prefix, finder, t, train, test, batch_size):
    """The statistics of the point at ``t`` (on this rank's share of the data), its weights and
    its BatchNorm statistics (recomputed) if it has any."""
    point, net = finder.point(t, "lin_connect"), finder.network(finder.params1)
    stats = evaluation.evaluate_point(finder, net, point, train, test, batch_size)
    out = {f"{prefix} {key}": np.array(value) for key, value in stats.items()}
    out[f"{prefix} weights"] = flat(point.params).numpy()
    if evaluation.has_batchnorm(net):
        out[f"{prefix} batchnorm"] = flat([b.double() for b in net.buffers()]).numpy()
    return out


def dense_cases():
    """Every step-wise and simultaneous kind of finder on tiny nets and Digits."""
    train, test = (tuple(t.double() if t.is_floating_point() else t
                         for t in data.load_split("Digits", None, split)) for split in (True, False))
    shares = [tuple(distributed.shard(t) for t in split) for split in (train, test)]
    out = {}
    for name, cls, fractions, repaired in ([case + (False,) for case in FINDERS]
                                           + [case + (True,) for case in REPAIRED]):
        m1, m2 = tiny_pair(cls, seed=7)
        finder = point_finders.make_point_finder(name, m1, m2, train[0], cls.__name__, torch.float64)
        finder = Repaired(finder) if repaired else finder
        for fraction in fractions:
            out.update(point_arrays(f"{name}{' repaired' * repaired} {fraction}", finder,
                                    fraction * finder.end_time, *shares, BATCH))
    return out


def images(count, seed):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(count, 3, 32, 32, generator=generator, dtype=torch.float64),
            torch.randint(0, 10, (count,), generator=generator))


def conv_cases():
    """A VGG16 B-fly point and a PreResNet110 point (BatchNorm recomputed) on 7 synthetic
    CIFAR-shaped images, batches of 3 or 4."""
    train, test = images(7, 0), images(5, 1)
    shares = [tuple(distributed.shard(t) for t in split) for split in (train, test)]
    out = {}
    for name, model, t in (("PointFinderStepWiseButterflyConvWBias", "VGG16", 6.5),
                           ("PointFinderSimultaneous", "PreResNet110", 0.5),
                           ("ActivationMatching", "PreResNet110", 0.5)):
        pair = []
        for seed in (1, 2):
            torch.manual_seed(seed)
            pair.append(models.build_model(model, 10, (3, 32, 32)).double().eval())
        finder = point_finders.make_point_finder(name, *pair, train[0], model, torch.float64)
        out.update(point_arrays(f"{name} {model}", finder, t, *shares, 4 if model == "VGG16" else 3))
    return out


def ensemble_cases():
    """WA(2) weights of two members adjusted to a base, and their accuracies."""
    x, _ = data.load_split("Digits", None, True)
    x_test, y_test = (distributed.shard(t) for t in data.load_split("Digits", None, False))
    members = [tiny_pair(Tiny3NoBias, seed)[0].double() for seed in (3, 5, 9)]
    index = 1  # linear_layers.1.weight, entering layer 1
    weights = wa_ensemble.adjusted_weights(members[0], members[1:], distributed.shard(x.double()), 1,
                                           index, BATCH)
    accuracy = [evaluation.accuracy(evaluation.predictions(m, x_test.double(), BATCH), y_test)
                for m in members]
    return {"WA weights": flat(weights).numpy(), "member accuracy": np.array(accuracy)}


def compute():
    torch.manual_seed(0)
    return {**dense_cases(), **ensemble_cases(), **conv_cases()}


if __name__ == "__main__":
    with distributed.job():
        results = compute()
        if distributed.is_main():
            np.savez(sys.argv[1], **results)
