"""WA(n) ensembling (paper, Section 6): hybrids that share the base model's lower layers, against
the plain ensemble of the same checkpoints (reference CLI). Writes ``ens_stat.npz`` and
``ensemble.png`` to ``--dir``."""
import os

import numpy as np
import torch
from tabulate import tabulate
from tqdm import tqdm

import data
import models
import utils
from point_finders.adjustment import StreamingLeastSquares, feature_matrix, outputs_of
from utils import UserError


def parse_args(argv=None):
    parser = utils.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", default="/tmp/eval_ensemble", help="output folder")
    parser.add_argument("--dataset", default="CIFAR10", help=", ".join(data.DATASETS))
    parser.add_argument("--data_path", default="data")
    parser.add_argument("--transform", default=None, help="VGG or ResNet (CIFAR only)")
    parser.add_argument("--model", required=True, help=", ".join(models.MODELS))
    parser.add_argument("--name", required=True,
                        help="substring of the checkpoint file names to ensemble (e.g. 400)")
    parser.add_argument("--layer", type=int, required=True,
                        help="layer whose features the members are adjusted to (forward(x, N=layer))")
    parser.add_argument("--layer_ind", type=int, required=True,
                        help="index in parameters() of the weight that is adjusted (may be negative)")
    parser.add_argument("--model_paths", required=True, help="folder searched for checkpoints")
    parser.add_argument("--base", default=None, help="checkpoint of the base model "
                        "(default: the first matching checkpoint by path)")
    parser.add_argument("--max_models", type=utils.number(int, minimum=1), default=7)
    utils.add_evaluation_arguments(parser)
    return parser.parse_args(argv)


def find_checkpoints(folder, name, base, max_models):
    """Every ``.pt`` file under ``folder`` whose *file name* contains ``name``, sorted by path, the
    base first; at most ``max_models``."""
    if not os.path.isdir(folder):
        raise UserError(f"--model_paths folder '{folder}' does not exist")
    paths = sorted(os.path.join(root, f) for root, _, files in os.walk(folder) for f in files
                   if f.endswith(".pt") and name in f)
    if base is not None:
        if not os.path.isfile(base):
            raise UserError(f"--base checkpoint '{base}' does not exist")
        paths = [base] + [p for p in paths if os.path.abspath(p) != os.path.abspath(base)]
    if not paths:
        raise UserError(f"no checkpoint under '{folder}' has '{name}' in its file name; "
                        f"check --name and --model_paths")
    return paths[:max_models]


def check_layers(model, model_name, layer, layer_ind):
    """Normalise a negative ``--layer_ind`` and check that it names the weight that consumes
    ``forward(x, N=layer)``; otherwise list the valid pairs."""
    count = len(list(model.parameters()))
    index = layer_ind + count if layer_ind < 0 else layer_ind
    if layer in model.wa_layers and index == model.weight_index(layer):
        return index
    pairs = ", ".join(f"--layer={n} --layer_ind={model.weight_index(n)}"
                      for n in reversed(model.wa_layers))
    raise UserError(f"--layer={layer} and --layer_ind={layer_ind} do not name the same layer of "
                    f"{model_name}; valid pairs: {pairs} (negative --layer_ind counts from the end)")


@torch.no_grad()
def layer_outputs(model, x, layer, batch_size):
    """``model(x, N=layer)`` on all of ``x``, in batches."""
    model.eval()
    return torch.cat([model(x[i:i + batch_size], N=layer) for i in range(0, len(x), batch_size)])


@torch.no_grad()
def adjusted_weights(base, members, x_train, layer, index, batch_size):
    """Each member's weight at parameter ``index`` re-fitted by WA to the base's features at
    ``layer``: ``adjust(W_k, F_k, F_base)``, in one pass over the training set with the Gram
    matrices accumulated over batches and the base's normal equations factored once for all."""
    if not members:
        return []
    for model in (base, *members):
        model.eval()
    weights = [list(m.parameters())[index].detach() for m in members]
    solver = StreamingLeastSquares()
    for i in tqdm(range(0, len(x_train), batch_size), desc="WA features", leave=False,
                  dynamic_ncols=True, disable=None):
        xb = x_train[i:i + batch_size]
        solver.add(feature_matrix(base(xb, N=layer)),
                   *[outputs_of(W, feature_matrix(m(xb, N=layer))) for m, W in zip(members, weights)])
    return [fitted.reshape(W.shape) for fitted, W in zip(solver.fit(), weights)]


def hybrid_parameters(base_params, member, weight, index):
    """The WA hybrid: the base's parameters before ``index``, the adjusted ``weight``, then the
    member's own parameters after it (its bias of that layer included)."""
    params = [p.detach() for p in member.parameters()]
    return base_params[:index] + [weight] + params[index + 1:]


@torch.no_grad()
def predictions(model, x, batch_size, start=None):
    """Softmax outputs of ``model`` on ``x``; with ``start`` the input of that layer is ``x``."""
    model.eval()
    run = model if start is None else (lambda h: model.forward_from(h, start))
    return torch.cat([torch.softmax(run(x[i:i + batch_size]), 1) for i in range(0, len(x), batch_size)])


def accuracy(probabilities, y):
    return 100.0 * (probabilities.argmax(1) == y).sum().item() / len(y)


def plot(path, plain, adjusted, single, single_adjusted, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n = np.arange(1, len(plain) + 1)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.plot(n, plain, "o-", label="ensemble")
    ax.plot(n, adjusted, "s-", label="WA ensemble")
    ax.plot(n, single, "o", mfc="none", color="C0", label="single model")
    ax.plot(n, single_adjusted, "s", mfc="none", color="C1", label="single WA hybrid")
    ax.set_xlabel("number of models")
    ax.set_ylabel("test accuracy (%)")
    ax.set_xticks(n)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    utils.save_figure(fig, path)


#: the result files, the plot first: ``ens_stat.npz`` exists only once the run is complete
OUTPUTS = ("ensemble.png", "ens_stat.npz")


def main(argv=None):
    args = parse_args(argv)
    data.check_dataset(args.dataset)
    data.resolve_transform(args.dataset, args.transform)
    models.check_model(args.model)
    num_classes, shape = data.num_classes_of(args.dataset), data.input_shape_of(args.dataset)
    index = check_layers(models.build_model(args.model, num_classes, shape), args.model,
                         args.layer, args.layer_ind)
    paths = find_checkpoints(args.model_paths, args.name, args.base, args.max_models)
    device = utils.select_device(args.cuda, args.device)
    utils.check_output_dir(args.dir, OUTPUTS)
    timer = utils.Timer()
    members = [models.load_model(args.model, p, num_classes, shape).to(device) for p in paths]
    x_train, _ = data.load_split(args.dataset, args.data_path, True, args.transform)
    x_test, y_test = data.load_split(args.dataset, args.data_path, False, args.transform)
    x_train, x_test, y_test = x_train.to(device), x_test.to(device), y_test.to(device)
    base = members[0]
    n_own = sum(1 for p in list(base.parameters())[index:] if p.dim() > 1)
    print(f"WA({n_own}) of {len(paths)} checkpoints, base {paths[0]}: each member keeps its last "
          f"{n_own} layer(s), the adjusted one included, on top of the base's trunk")

    adjusted = [None] + adjusted_weights(base, members[1:], x_train, args.layer, index,
                                         args.batch_size)
    for path, weight in zip(paths[1:], adjusted[1:]):
        if not torch.isfinite(weight).all():
            raise UserError(f"the adjusted weight of member '{path}' is not finite (its features "
                            f"overflow); leave that checkpoint out of --model_paths")
    base_test = layer_outputs(base, x_test, args.layer, args.batch_size)
    hybrid = models.build_model(args.model, num_classes, shape).to(device)
    base_params = [p.detach() for p in base.parameters()]
    sums = {"plain": 0, "adjusted": 0}
    stats = {k: [] for k in ("one_model_accuracy", "ensemble_accuracy",
                             "one_model_accuracy_adjusted", "ensemble_accuracy_adjusted")}
    rows = []
    for k, (path, member) in enumerate(tqdm(list(zip(paths, members)), desc="members",
                                            dynamic_ncols=True, disable=None)):
        plain = predictions(member, x_test, args.batch_size)
        params = base_params if k == 0 else hybrid_parameters(  # the first hybrid is the base
            base_params, member, adjusted[k], index)
        for p, value in zip(hybrid.parameters(), params):
            p.data = value
        mixed = predictions(hybrid, base_test, args.batch_size, start=args.layer)
        if not (torch.isfinite(plain).all() and torch.isfinite(mixed).all()):
            raise UserError(f"member '{path}' gives non-finite outputs on the test set; leave it "
                            f"out of --model_paths")
        sums["plain"] = sums["plain"] + plain
        sums["adjusted"] = sums["adjusted"] + mixed
        row = [accuracy(plain, y_test), accuracy(sums["plain"] / (k + 1), y_test),
               accuracy(mixed, y_test), accuracy(sums["adjusted"] / (k + 1), y_test)]
        for key, value in zip(stats, row):
            stats[key].append(value)
        rows.append([k + 1, os.path.basename(os.path.dirname(path)) + "/" + os.path.basename(path)]
                    + row)
        tqdm.write(f"model {k + 1}: accuracy {row[0]:.2f}%, ensemble {row[1]:.2f}% | "
                   f"WA hybrid {row[2]:.2f}%, WA ensemble {row[3]:.2f}%")

    sizes = [p.numel() for p in base.parameters()]
    plain_count = [(k + 1) * sum(sizes) for k in range(len(paths))]
    wa_count = [sum(sizes[:index]) + (k + 1) * sum(sizes[index:]) for k in range(len(paths))]
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
                    "layer_ind": index, "model": args.model, "dataset": args.dataset,
                    "device": utils.device_label(device),
                    "computation_time": timer()})
    plot(os.path.join(args.dir, OUTPUTS[0]), stats["ensemble_accuracy"],
         stats["ensemble_accuracy_adjusted"], stats["one_model_accuracy"],
         stats["one_model_accuracy_adjusted"], f"{args.model}: WA({n_own}), --layer={args.layer}")
    utils.atomic_write(os.path.join(args.dir, OUTPUTS[1]), lambda tmp: np.savez(tmp, **results))


if __name__ == "__main__":
    utils.run_cli(main)
