"""The paper's procedures as compositions of named parts, in one table (docs/METHODS.md, "Procedure
index"). Importable without torch: the command line's help and checks read it.

A procedure is a schedule, a matching, an adjustment and what it needs of the architecture; the
connector (``--method``: ``lin_connect`` or ``arc_connect``) is the fourth part, chosen at run
time. The parts:

* ``schedule``: "simultaneous" (every tensor at once, one segment); "neurons" (one segment moving
  the neuron samples ``[W_0[j], b_0[j], W_1[:, j]]``, the bias inside the sample, Table 1);
  "butterflies" (segment ``l`` moves the butterfly of hidden layer ``l``: the rows of ``W_l`` and
  ``b_l`` and the columns of ``W_{l+1}``, biases connected on their own); "layers" (segment ``l``
  moves layer ``l``).
* ``matching``: ``None``, or the name of a matching in ``point_finders.matching.MATCHINGS`` (OT per
  segment on butterflies or on incoming rows, or OT once before the path); with the simultaneous
  schedule, the name of a whole-network alignment in ``point_finders.alignment.ALIGNMENTS``
  (weight or activation matching over the hidden-unit groups, before the path).
* ``adjustment``: ``None``; "butterfly" (model 2's side of segment ``l`` uses the adjusted
  ``A_{l+1}`` instead of ``W^2_{l+1}``, B-fly); "refit" (layer ``l + 1`` re-fitted by weight
  adjustment at every point, WA; the "layers" schedule).
* ``needs``: a name in ``models.architecture.FAMILIES``: which architectures it fits.

Adding a procedure is one row here (plus, for a new part, one entry in the registry of that part);
docs/METHODS.md shows an example.
"""
from dataclasses import dataclass

SCHEDULES = ("simultaneous", "neurons", "butterflies", "layers")
ADJUSTMENTS = (None, "butterfly", "refit")


@dataclass(frozen=True)
class Procedure:
    """One row of the table: the paper's table and names (per connector), and the parts."""
    table: str
    names: dict
    schedule: str
    matching: str = None
    adjustment: str = None
    needs: str = "any network"

    def __post_init__(self):
        if self.schedule not in SCHEDULES or self.adjustment not in ADJUSTMENTS:
            raise ValueError(f"unknown part in {self}")
        if (self.schedule == "layers") != (self.adjustment == "refit"):
            raise ValueError(f"the layers schedule goes with the refit adjustment, only: {self}")

    def path_end(self, layers):
        """Where the path reaches model 2, for a chain of ``layers`` weight layers: one segment,
        one per butterfly (``layers - 1``) or one per layer (``layers``)."""
        return {"simultaneous": 1, "layers": layers}.get(self.schedule, layers - 1)

    def discontinuities(self, layers):
        """End times where the path jumps: with a re-fit the re-fitted layer changes between
        segments ``1 .. layers - 2`` (the reference's path; docs/METHODS.md, "Table 2")."""
        return tuple(range(1, layers - 1)) if self.adjustment == "refit" else ()


TABLE1, TABLE2 = "one hidden dense layer with biases", "dense layers without biases"
CONV = "a chain of convolutions with biases"
LINEAR_ARC = {"lin_connect": "Linear", "arc_connect": "Arc"}


def named(suffix, ot_only=False):
    """The paper's names "Linear + X" / "Arc + X" (or "OT + X" alone)."""
    if ot_only:
        return {"lin_connect": f"OT + {suffix}"}
    return {method: f"{name} + {suffix}" for method, name in LINEAR_ARC.items()}


#: the reference's point finder names, in the order of the paper's tables
PROCEDURES = {
    "PointFinderWithBias": Procedure("Table 1", LINEAR_ARC, "neurons", needs=TABLE1),
    "PointFinderInverseWithBias": Procedure("Table 1", named("Weight Adjustment"), "layers",
                                            adjustment="refit", needs=TABLE1),
    "PointFinderTransportation": Procedure("Table 1", {"lin_connect": "OT"}, "neurons",
                                           "ot_butterflies", needs=TABLE1),
    "PointFinderInverseWithBiasOT": Procedure("Table 1", named("Weight Adjustment", True), "layers",
                                              "ot_weights_once", "refit", TABLE1),
    "PointFinderSimultaneous": Procedure("Table 2", LINEAR_ARC, "simultaneous"),
    "PointFinderStepWiseButterfly": Procedure("Table 2", named("B-fly"), "butterflies",
                                              adjustment="butterfly", needs=TABLE2),
    "PointFinderStepWiseInverse": Procedure("Table 2", named("WA"), "layers", adjustment="refit",
                                            needs=TABLE2),
    "PointFinderStepWiseTransportation": Procedure("Table 2", named("B-fly", True), "butterflies",
                                                   "ot_butterflies", "butterfly", TABLE2),
    "PointFinderStepWiseInverseOT": Procedure("Table 2", named("WA", True), "layers", "ot_rows",
                                              "refit", TABLE2),
    "PointFinderStepWiseButterflyConvWBias": Procedure("Table 3", named("B-fly"), "butterflies",
                                                       adjustment="butterfly", needs=CONV),
    "PointFinderStepWiseButterflyConvWBiasOT": Procedure("Table 3", named("B-fly", True),
                                                         "butterflies", "ot_butterflies",
                                                         "butterfly", CONV),
    "PointFinderStepWiseButterflyConvWBiasWA": Procedure("Table 3", named("WA"), "layers",
                                                         adjustment="refit", needs=CONV),
    "PointFinderStepWiseButterflyConvWBiasOTWA": Procedure("Table 3", named("WA", True), "layers",
                                                           "ot_rows", "refit", CONV),
}


#: permutation alignment (Ainsworth et al. 2022, "Git Re-Basin"), beside the paper's procedures:
#: model 2's hidden units permuted to line up with model 1's, then the connector
ALIGNED = "a network with hidden-unit groups"
PROCEDURES.update({
    "WeightMatching": Procedure("Ainsworth et al. 2022", named("weight matching"), "simultaneous",
                                "weight_matching", needs=ALIGNED),
    "ActivationMatching": Procedure("Ainsworth et al. 2022", named("activation matching"),
                                    "simultaneous", "activation_matching", needs=ALIGNED),
})

#: curves trained between the end-points (Garipov et al. 2018; ``curves.py``), point finders beside
#: the procedures: ``--point_finder=Bezier --curve_checkpoint=<train.py --curve=Bezier run>``
TRAINED_CURVES = ("Bezier", "PolyChain")


#: the schedules whose path is one segment from model 1 to model 2, where every hidden unit moves
#: from a unit of model 1 to its partner in model 2: REPAIR (``--repair``) applies to them
REPAIRABLE = ("simultaneous", "neurons")


def repairable():
    """The finders REPAIR applies to (``REPAIRABLE`` schedules)."""
    return [name for name, p in PROCEDURES.items() if p.schedule in REPAIRABLE]


def procedures(table):
    """``[(finder, connector, paper's name)]`` of one of the paper's tables, in its order."""
    return [(finder, method, name) for finder, p in PROCEDURES.items() if p.table == table
            for method, name in p.names.items()]


def paper_name(finder, method):
    """The paper's name of a finder + connector, e.g. "OT + WA (Table 2)"; a trained curve's
    name for those."""
    if finder in TRAINED_CURVES:
        return f"{finder} curve (trained, Garipov et al. 2018)"
    p = PROCEDURES.get(finder)
    return f"{p.names[method]} ({p.table})" if p and method in p.names else \
        "not one of the paper's procedures"
