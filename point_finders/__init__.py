"""Point finders: each builds, from two end-points and the training data, a path ``t -> network``.

The names are the reference's CLI names; each is a row of ``procedures.PROCEDURES`` (a schedule,
a matching, an adjustment, what it needs of the architecture, and the paper's names with each
connector). ``make_point_finder`` builds the engine of the row's schedule with its parts.
"""
import torch

from models.architecture import FAMILIES
from procedures import PROCEDURES
from utils import UserError
from .base import Point, PointFinder, path_end
from .simultaneous import Simultaneous
from .step_wise import StepWise
from .trained_curve import TrainedCurve

#: every finder name, with its procedure
FINDERS = PROCEDURES


def fits(name, model):
    """Whether finder ``name`` applies to ``model``: its architecture has what the procedure needs."""
    return FAMILIES[PROCEDURES[name].needs](model.architecture)


def finders_for(model):
    """Names of the finders that apply to ``model``."""
    return [name for name in PROCEDURES if fits(name, model)]


def check_fits(name, model, model_name):
    """The procedure of finder ``name`` if it applies to ``model``; otherwise one line saying what
    fits."""
    if name not in PROCEDURES:
        raise UserError(f"unknown point finder '{name}'; choose one of: {', '.join(PROCEDURES)}")
    if not fits(name, model):
        raise UserError(f"{name} does not fit model {model_name} (it needs {PROCEDURES[name].needs}); "
                        f"finders that fit it: {', '.join(finders_for(model))}")
    return PROCEDURES[name]


def make_point_finder(name, model1, model2, x_train, model_name, dtype=torch.float32):
    """Build finder ``name`` for the two end-points, or fail with one line saying what fits."""
    procedure = check_fits(name, model1, model_name)
    engine = Simultaneous if procedure.schedule == "simultaneous" else StepWise
    return engine(procedure, model1, model2, x_train, dtype)


__all__ = ["FINDERS", "Point", "PointFinder", "TrainedCurve", "check_fits", "finders_for", "fits",
           "make_point_finder", "path_end"]
