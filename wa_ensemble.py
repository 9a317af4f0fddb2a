"""WA(n) ensembles (paper, Section 6), as ``eval_ensemble.py`` runs them: each member's weight
of one layer re-fitted by weight adjustment to the base model's features, the member's own layers
above it, against the plain ensemble of the same checkpoints; ``ensemble.png`` and
``ens_stat.npz``."""
import copy
import os

import numpy as np
import torch
from tabulate import tabulate
from tqdm import tqdm

import data
import distributed
import models
import utils
from evaluation import accuracy, forward_batches, layer_outputs, predictions
from point_finders.adjustment import WeightAdjustment, adjustment_targets
from utils import UserError

#: the result files, the plot first: ``ens_stat.npz`` exists only once the run is complete
OUTPUTS = ("ensemble.png", "ens_stat.npz")
#: what is recorded after each added member, in ``ens_stat.npz``
STATS = ("one_model_accuracy", "ensemble_accuracy", "one_model_accuracy_adjusted",
         "ensemble_accuracy_adjusted")


def find_checkpoints(folder, name, base, max_models):
    """Every ``.pt`` file under ``folder`` whose *file name* contains ``name``, sorted by path, the
    base first; at most ``max_models``."""
    if not os.path.isdir(folder):
        what = "is a file, not a folder" if os.path.exists(folder) else "does not exist"
        raise UserError(f"--model_paths folder '{folder}' {what}; give the folder that holds the "
                        f"members' checkpoints")
    paths = sorted(os.path.join(root, f) for root, _, files in os.walk(folder) for f in files
                   if f.endswith(".pt") and name in f)
    if base is not None:
        if not os.path.isfile(base):
            raise UserError(f"--base checkpoint '{base}' {utils.missing_file(base)}; give a .pt "
                            f"file written by train.py")
        paths = [base] + [p for p in paths if os.path.abspath(p) != os.path.abspath(base)]
    if not paths:
        raise UserError(f"no checkpoint under '{folder}' has '{name}' in its file name; "
                        f"check --name and --model_paths")
    return paths[:max_models]


def check_layers(model, model_name, layer, layer_ind):
    """Normalise a negative ``--layer_ind`` and check that it names the weight of the layer that
    ``forward(x, N=layer)`` enters; otherwise list the valid pairs. Returns that weight's index in
    ``parameters()``."""
    architecture = model.architecture
    if not architecture.layers:
        raise UserError(f"{model_name} has no layer that WA(n) can adjust (its blocks are not a "
                        f"chain of single layers); WA ensembles take the dense nets and VGG16")
    names = [name for name, _ in model.named_parameters()]
    valid = {l - architecture.reference_offset: names.index(architecture.layers[l].weight)
             for l in architecture.adjustable_layers()}
    index = layer_ind + len(names) if layer_ind < 0 else layer_ind
    if valid.get(layer) == index:
        return index
    pairs = ", ".join(f"--layer={n} --layer_ind={i}" for n, i in reversed(valid.items()))
    raise UserError(f"--layer={layer} and --layer_ind={layer_ind} do not name the same layer of "
                    f"{model_name}; valid pairs: {pairs} (negative --layer_ind counts from the end)")


def entering(model, layer):
    """The layer that ``forward(x, N=layer)`` (the reference's ``--layer``) enters."""
    return layer + model.architecture.reference_offset


@torch.no_grad()
def adjusted_weights(base, members, x_train, l, index, batch_size):
    """Each member's weight at parameter ``index`` (layer ``l``'s) re-fitted by weight adjustment
    to the base's features entering layer ``l``: ``adjust(W_k, F_k, F_base)``, in one pass over the
    training set, the base's normal equations factored once for all members."""
    if not members:
        return []
    for model in (base, *members):
        model.eval()
    weights = [list(m.parameters())[index].detach() for m in members]
    fit = WeightAdjustment(weights[0].shape)
    batches = forward_batches(lambda xb: [m.features(xb, l) for m in (base, *members)], x_train,
                              batch_size, desc="WA features")
    for _, (features, *own) in batches:
        fit.add(features, *[adjustment_targets(W, f) for W, f in zip(weights, own)])
    return fit.fit()


def hybrid_parameters(base_params, member, weight, index):
    """The WA hybrid: the base's parameters before ``index``, the adjusted ``weight``, then the
    member's own parameters after it (its bias of that layer included)."""
    params = [p.detach() for p in member.parameters()]
    return base_params[:index] + [weight] + params[index + 1:]


def plot(path, stats, title):
    """Ensemble and single-member accuracy against the number of members, plain and WA; the
    curves are drawn with distinct markers and line styles, so one that coincides with another
    stays visible, and the y-range is at least two percentage points."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n = np.arange(1, len(stats["ensemble_accuracy"]) + 1)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.plot(n, stats["ensemble_accuracy"], "o-", ms=9, color="C0", label="plain ensemble")
    ax.plot(n, stats["ensemble_accuracy_adjusted"], "s--", ms=5, color="C1", label="WA ensemble")
    ax.plot(n, stats["one_model_accuracy"], "o", ms=9, mfc="none", color="C0",
            label="single member")
    ax.plot(n, stats["one_model_accuracy_adjusted"], "x", ms=7, color="C1",
            label="single WA hybrid")
    values = np.concatenate([stats[key] for key in STATS])
    middle = 0.5 * (values.max() + values.min())
    half = max(1.0, 0.6 * (values.max() - values.min()))
    ax.set_ylim(middle - half, middle + half)
    ax.set_xlabel("number of members")
    ax.set_ylabel("test accuracy (%)")
    ax.set_xticks(n)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    utils.save_figure(fig, path)


def draw(path, results):
    """``ensemble.png`` from the contents of an ``ens_stat.npz`` (the run writes it so, and the
    results driver redraws a missing one so)."""
    wa = f"WA({int(results['wa_n'])})" if "wa_n" in results else "WA"
    plot(path, results, f"{results['model']} on {results['dataset']}: {wa} ensemble, "
                        f"--layer={int(results['layer'])}")


def check_inputs(args):
    """Names, layers, checkpoints and the output folder, checked before anything is computed;
    returns ``(paths, index of the adjusted weight, num_classes, input shape)``."""
    data.check_dataset(args.dataset)
    data.resolve_transform(args.dataset, args.transform)
    models.check_model(args.model)
    num_classes, shape = data.num_classes_of(args.dataset), data.input_shape_of(args.dataset)
    with torch.device("meta"):
        index = check_layers(models.build_model(args.model, num_classes, shape), args.model,
                             args.layer, args.layer_ind)
    paths = find_checkpoints(args.model_paths, args.name, args.base, args.max_models)
    utils.check_output_dir(args.dir, OUTPUTS)
    return paths, index, num_classes, shape


def member_rows(args, paths, members, adjusted, index, test):
    """Add the members one by one; return the recorded statistics and the printed rows."""
    x_test, y_test = test
    base = members[0]
    base_test = layer_outputs(base, x_test, entering(base, args.layer), args.batch_size)
    hybrid = copy.deepcopy(base)  # a network of the same architecture, given each hybrid's parameters
    base_params = [p.detach() for p in base.parameters()]
    sums = {"plain": 0, "adjusted": 0}
    stats, rows = {k: [] for k in STATS}, []
    for k, (path, member) in enumerate(distributed.progress(list(zip(paths, members)),
                                                            desc="members")):
        plain = predictions(member, x_test, args.batch_size)
        params = base_params if k == 0 else hybrid_parameters(  # the first hybrid is the base
            base_params, member, adjusted[k], index)
        for p, value in zip(hybrid.parameters(), params):
            p.data = value
        mixed = predictions(hybrid, base_test, args.batch_size, start=entering(base, args.layer))
        finite = bool(torch.isfinite(plain).all() and torch.isfinite(mixed).all())
        if distributed.sums(not finite)[0]:  # on any rank's test rows
            raise distributed.SharedError(f"member '{path}' gives non-finite outputs on the test "
                                          f"set; leave it out of --model_paths")
        sums["plain"] = sums["plain"] + plain
        sums["adjusted"] = sums["adjusted"] + mixed
        row = [accuracy(plain, y_test), accuracy(sums["plain"] / (k + 1), y_test),
               accuracy(mixed, y_test), accuracy(sums["adjusted"] / (k + 1), y_test)]
        for key, value in zip(STATS, row):
            stats[key].append(value)
        rows.append([k + 1, os.path.basename(os.path.dirname(path)) + "/" + os.path.basename(path)]
                    + row)
        tqdm.write(f"model {k + 1}: accuracy {row[0]:.2f}%, ensemble {row[1]:.2f}% | "
                   f"WA hybrid {row[2]:.2f}%, WA ensemble {row[3]:.2f}%")
    return stats, rows


def parameter_counts(model, index, members):
    """Parameters of the plain and of the WA ensemble of the first ``k`` members, ``k = 1..``."""
    sizes = [p.numel() for p in model.parameters()]
    plain = [k * sum(sizes) for k in range(1, members + 1)]
    wa = [sum(sizes[:index]) + k * sum(sizes[index:]) for k in range(1, members + 1)]
    return plain, wa


def prepare(args):
    """The checks, the device, the members and the data: ``(device, paths, index, members,
    train, test)``, every rank loading all of it."""
    paths, index, num_classes, shape = check_inputs(args)
    device = utils.select_device(args.cuda, args.device)
    members = [models.load_model(args.model, p, num_classes, shape, "member", args.dataset).to(device)
               for p in paths]
    train = data.load_split(args.dataset, args.data_path, True, args.transform)
    test = data.load_split(args.dataset, args.data_path, False, args.transform)
    return device, paths, index, members, train, test


def run(args):
    """Build and evaluate the ensembles ``eval_ensemble.py`` was asked for; save and print them.
    Under ``torchrun`` each rank adjusts on its share of the training set (the normal equations
    summed over the ranks) and evaluates its share of the test set; rank 0 prints and writes."""
    timer = utils.Timer()
    device, paths, index, members, train, test = distributed.agree(lambda: prepare(args))
    x_train = distributed.shard(train[0]).to(device)
    test = tuple(distributed.shard(t).to(device) for t in test)
    base = members[0]
    l = entering(base, args.layer)
    n_own = len(base.architecture.layers) - l
    print(f"WA({n_own}) of {len(paths)} checkpoints, base {paths[0]}: each member keeps its last "
          f"{n_own} layer(s), the adjusted one included, on top of the base's trunk")
    adjusted = [None] + adjusted_weights(base, members[1:], x_train, l, index, args.batch_size)
    for path, weight in zip(paths[1:], adjusted[1:]):
        if not torch.isfinite(weight).all():  # the same weights on every rank
            raise distributed.SharedError(
                f"the adjusted weight of member '{path}' is not finite (its features overflow); "
                f"leave that checkpoint out of --model_paths")
    stats, rows = member_rows(args, paths, members, adjusted, index, test)
    plain_count, wa_count = parameter_counts(base, index, len(paths))
    print(tabulate([r + [plain_count[i], wa_count[i]] for i, r in enumerate(rows)],
                   ["n", "checkpoint", "model acc", "ensemble acc", "WA hybrid acc",
                    "WA ensemble acc", "ensemble params", "WA params"],
                   tablefmt="simple", floatfmt=".2f"))
    print(f"WA({n_own}) ensemble of {len(paths)}: {stats['ensemble_accuracy_adjusted'][-1]:.2f}% "
          f"with {wa_count[-1]:,} parameters; plain ensemble {stats['ensemble_accuracy'][-1]:.2f}% "
          f"with {plain_count[-1]:,} ({timer():.1f} s)")
    results = {key: np.array(value) for key, value in stats.items()}
    results.update({"checkpoints": np.array(paths), "ensemble_parameters": np.array(plain_count),
                    "ensemble_parameters_adjusted": np.array(wa_count), "layer": args.layer,
                    "layer_ind": index, "wa_n": n_own, "model": args.model, "dataset": args.dataset,
                    "device": utils.device_label(device), "processes": distributed.world_size(),
                    "computation_time": timer()})
    if distributed.is_main():
        draw(os.path.join(args.dir, OUTPUTS[0]), results)
        utils.atomic_write(os.path.join(args.dir, OUTPUTS[1]), lambda tmp: np.savez(tmp, **results))
