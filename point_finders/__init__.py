"""Point finders: each builds, from two end-points and the training data, a path ``t -> network``.

Names are the reference's CLI names; METHODS.md gives the paper's name of each combination with a
connector (e.g. PointFinderInverseWithBias + arc_connect is "Arc + Weight Adjustment", Table 1).
"""
import torch

from utils import UserError
from .base import Point, PointFinder
from .simultaneous import PointFinderSimultaneous
from .step_wise import (PointFinderInverseWithBias, PointFinderInverseWithBiasOT,
                        PointFinderStepWiseButterfly, PointFinderStepWiseButterflyConvWBias,
                        PointFinderStepWiseButterflyConvWBiasOT,
                        PointFinderStepWiseButterflyConvWBiasOTWA,
                        PointFinderStepWiseButterflyConvWBiasWA, PointFinderStepWiseInverse,
                        PointFinderStepWiseInverseOT, PointFinderStepWiseTransportation,
                        PointFinderTransportation, PointFinderWithBias)

FINDERS = {cls.__name__: cls for cls in (
    PointFinderWithBias, PointFinderTransportation, PointFinderInverseWithBias,
    PointFinderInverseWithBiasOT, PointFinderSimultaneous, PointFinderStepWiseButterfly,
    PointFinderStepWiseInverse, PointFinderStepWiseTransportation, PointFinderStepWiseInverseOT,
    PointFinderStepWiseButterflyConvWBias, PointFinderStepWiseButterflyConvWBiasOT,
    PointFinderStepWiseButterflyConvWBiasWA, PointFinderStepWiseButterflyConvWBiasOTWA)}


def finders_for(model):
    """Names of the finders that apply to ``model``."""
    return [name for name, cls in FINDERS.items() if cls.fits(model)]


def check_fits(name, model, model_name):
    """The finder class ``name`` if it applies to ``model``; otherwise one line saying what fits."""
    if name not in FINDERS:
        raise UserError(f"unknown point finder '{name}'; choose one of: {', '.join(FINDERS)}")
    if not FINDERS[name].fits(model):
        raise UserError(f"{name} does not fit model {model_name}; finders that fit it: "
                        f"{', '.join(finders_for(model))}")
    return FINDERS[name]


def make_point_finder(name, model1, model2, x_train, model_name, dtype=torch.float32):
    """Build finder ``name`` for the two end-points, or fail with one line saying what fits."""
    return check_fits(name, model1, model_name)(model1, model2, x_train, dtype)


__all__ = ["FINDERS", "Point", "PointFinder", "check_fits", "finders_for", "make_point_finder", *FINDERS]
