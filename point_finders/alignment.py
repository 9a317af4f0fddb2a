"""Permutation alignment of whole networks over their hidden-unit groups (docs/METHODS.md,
"Permutation alignment").

Both methods choose, for every group of the architecture description (``models.architecture``),
the permutation of model 2's units that lines them up with model 1's; the path is then a
connector between model 1 and the permuted model 2, which computes the same function as model 2.

* **Weight matching** (Ainsworth et al. 2022, "Git Re-Basin", Sec. 3.2) visits the groups by
  coordinate descent: for one group, with every other group's current permutation applied to
  model 2, the permutation that maximises the sum, over every parameter tensor the group touches,
  of the inner product between model 1's tensor and model 2's is a linear assignment problem,
  solved exactly. Groups are visited in a seeded random order; the descent stops after a full
  sweep that changes nothing (or ``max_sweeps`` sweeps). The objective never decreases, since
  keeping a group's permutation is always a candidate.
* **Activation matching** (ibid., Sec. 3.1) matches each group's units by the Pearson correlation
  of their activations on the training data, accumulated over batches: the assignment that
  maximises the summed correlation of matched units. Correlation rather than the raw cross-moment
  ``E[a1 a2]``: units of independently trained networks differ in scale, and the cross-moment
  would pair large units with large units whatever their pattern. A group's activations do not
  depend on the other groups' permutations (a permuted network computes the same function), so
  one pass over the data solves every group.
"""
import torch

import distributed
from models.architecture import permute
from .matching import assignment

MAX_SWEEPS = 100       # weight matching: at most this many sweeps over the groups
ACTIVATION_BATCH = 500  # activation matching: training samples per forward pass


def tensor_rows(tensor, axis):
    """``tensor`` with ``axis`` first, one row per unit."""
    return tensor.movedim(axis, 0).reshape(tensor.shape[axis], -1)


class WeightMatching:
    """Coordinate descent over ``groups`` on two ``state_dict``s; only the parameter tensors
    (``keys``) enter the objective, while a permutation also moves the buffers (running
    statistics) of its group."""

    def __init__(self, state1, state2, groups, keys):
        self.state1, self.state2, self.groups = state1, state2, groups
        self.keys = set(keys)
        self.perms = {g.name: torch.arange(g.size) for g in groups}
        touching = {}
        for g in groups:
            for key, _ in g.axes:
                touching.setdefault(key, set()).add(g.name)
        # per group: the part of its similarity from tensors no other group touches (fixed)
        self.fixed = {g.name: self._products(g, self.state2, lambda key: touching[key] == {g.name})
                      for g in groups}
        self.moving = {g.name: lambda key, g=g: touching[key] != {g.name} for g in groups}

    def _products(self, group, state2, which):
        """``Σ rows(θ1_k) rows(θ2_k)ᵀ`` over ``group``'s parameter tensors ``k`` that ``which``
        selects: each product in the networks' dtype, summed in float64."""
        S = 0
        for key, axis in group.axes:
            if key in self.keys and which(key):
                S = S + (tensor_rows(self.state1[key], axis) @ tensor_rows(state2[key], axis).T).double()
        return S

    def similarity(self, group):
        """``S[i, j]``: the objective's terms of ``group`` if model 2's unit ``j`` takes the place
        of model 1's unit ``i``, the other groups' permutations applied."""
        others = [g for g in self.groups if g is not group]
        state2 = permute(self.state2, others, self.perms)
        return self.fixed[group.name] + self._products(group, state2, self.moving[group.name])

    def objective(self):
        """``Σ_k <θ1_k, π(θ2)_k>`` over the parameter tensors."""
        state2 = permute(self.state2, self.groups, self.perms)
        return sum((self.state1[k].double() * state2[k].double()).sum().item() for k in self.keys)

    def step(self, group):
        """The best permutation of ``group`` given the others; whether it gains anything."""
        S = self.similarity(group)
        perm = assignment(S, maximize=True).cpu()
        units = torch.arange(group.size)
        old, new = S[units, self.perms[group.name]].sum().item(), S[units, perm].sum().item()
        if new > old + 1e-12 * max(abs(old), 1.0):
            self.perms[group.name] = perm
            return True
        return False

    def run(self, seed=0, max_sweeps=MAX_SWEEPS):
        """Sweeps until one changes nothing; the permutations and the objective after each sweep
        (the first entry: before any)."""
        generator = torch.Generator().manual_seed(seed)
        history = [self.objective()]
        for _ in range(max_sweeps):
            order = torch.randperm(len(self.groups), generator=generator).tolist()
            changed = [self.step(self.groups[i]) for i in order]
            history.append(self.objective())
            if not any(changed):
                break
        return self.perms, history


class ActivationStatistics:
    """Per group, the float64 sums over rows of ``a1``, ``a2``, their squares and ``a1ᵀ a2``,
    from which the correlation of every pair of units follows."""

    def __init__(self):
        self.sums = {}

    def add(self, seen1, seen2):
        """One batch's ``unit_activations`` of model 1 and model 2."""
        for name, a1 in seen1.items():
            a2 = seen2[name]
            batch = [torch.tensor(float(len(a1)), device=a1.device, dtype=torch.float64),
                     a1.sum(0, dtype=torch.float64), a2.sum(0, dtype=torch.float64),
                     a1.double().pow(2).sum(0), a2.double().pow(2).sum(0),
                     (a1.T @ a2).double()]  # products in the data's precision, summed in float64
            held = self.sums.get(name)
            self.sums[name] = batch if held is None else [h + b for h, b in zip(held, batch)]

    def combine_ranks(self):
        """Under ``torchrun``: every rank's sums added up."""
        for parts in self.sums.values():
            for part in parts:
                distributed.all_reduce(part)

    def correlation(self, name):
        """``C[i, j]``: the correlation of model 1's unit ``i`` with model 2's unit ``j`` (0 where
        either unit is constant on the data)."""
        n, s1, s2, q1, q2, cross = self.sums[name]
        m1, m2 = s1 / n, s2 / n
        sd1, sd2 = (((q - n * m * m).clamp_min(0) / n).sqrt() for q, m in ((q1, m1), (q2, m2)))
        covariance = cross / n - torch.outer(m1, m2)
        scale = torch.outer(sd1, sd2)
        return torch.where(scale > 0, covariance / scale.clamp_min(1e-300), torch.zeros_like(scale))


def weight_matching(model1, model2, x_train, seed=0, max_sweeps=MAX_SWEEPS):
    """The permutations of model 2's groups found by weight matching, and what to record: the
    objective after each sweep."""
    groups = model1.architecture.groups
    keys = [name for name, _ in model1.named_parameters()]
    state1 = {k: v.detach() for k, v in model1.state_dict().items()}
    state2 = {k: v.detach() for k, v in model2.state_dict().items()}
    perms, history = WeightMatching(state1, state2, groups, keys).run(seed, max_sweeps)
    return perms, {"weight_matching_objective": history}


@torch.no_grad()
def activation_matching(model1, model2, x_train, seed=0, batch_size=ACTIVATION_BATCH):
    """The permutations of model 2's groups found by activation matching on the training data
    (this rank's share under ``torchrun``, the sums added over the ranks), and what to record:
    the mean correlation of the matched units, per group."""
    statistics = ActivationStatistics()
    x = distributed.shard(x_train)
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        statistics.add(model1.unit_activations(xb), model2.unit_activations(xb))
    statistics.combine_ranks()
    perms, matched = {}, []
    for group in model1.architecture.groups:
        C = statistics.correlation(group.name)
        perms[group.name] = assignment(C, maximize=True).cpu()
        matched.append(C[torch.arange(group.size, device=C.device), perms[group.name].to(C.device)]
                       .mean().item())
    return perms, {"activation_matching_correlation": matched}


#: the whole-network alignments the procedure table (``procedures.PROCEDURES``) names
ALIGNMENTS = {"weight_matching": weight_matching, "activation_matching": activation_matching}
