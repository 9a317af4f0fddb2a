"""Training an end-point network, as ``train.py`` runs it: SGD with momentum, the reference's
learning-rate schedule, checkpoints written atomically, exact and checked ``--resume``, a
diverging run stopped at its first non-finite epoch.

Under ``torchrun`` the model is wrapped in ``DistributedDataParallel``: each batch of the epoch's
data order (a function of seed and epoch, as in one process) is split between the ranks
(``data.BatchPart``), each rank's loss is scaled so that the averaged gradient is the mean over
the whole batch, and rank 0 alone writes checkpoints (docs/DISTRIBUTED.md)."""
import os
import shlex
import sys

import numpy as np
import torch
from tabulate import tabulate

import curves
import data
import distributed
import evaluation
import models
import utils
from utils import UserError

COLUMNS = ["ep", "lr", "tr_loss", "tr_acc", "te_nll", "te_acc", "time"]
#: the settings a --resume must share with the run that wrote its checkpoint
RUN_SETTINGS = ("model", "dataset", "seed", "lr", "momentum", "wd", "batch_size", "transform")
#: the settings a network's initial weights (checkpoint-0.pt) depend on
INIT_SETTINGS = ("model", "dataset", "seed")
#: the settings a curve's --resume must share too (compared also when one side has none)
CURVE_SETTINGS = ("curve", "num_bends", "fix_start", "fix_end", "init_linear")
#: the streams of ``derived_seed`` a curve's ``t`` and, under torchrun, each rank's training draw
#: from (the data order uses none); distinct, so that no rank's dropout repeats the ``t`` draws
CURVE_T_STREAM, RANK_STREAM = 1, 2
#: the flags that only a curve's training takes
CURVE_FLAGS = ("init_start", "init_end", "fix_start", "fix_end", "init_linear_off")


def derived_seed(*entropy):
    """A 63-bit seed fixed by the integers ``entropy``."""
    state = np.random.SeedSequence(list(entropy)).generate_state(2, dtype=np.uint64)
    return int(state[0] >> np.uint64(1))


def epoch_generator(seed, epoch):
    """A torch generator fixed by ``(seed, epoch)``: epoch ``e``'s data order never depends on history."""
    return torch.Generator().manual_seed(derived_seed(seed, epoch))


def saved_epochs(args, start_epoch):
    """The epochs whose checkpoints this run writes (0 unless resuming)."""
    epochs = [e for e in range(start_epoch, args.epochs + 1)
              if e % args.save_freq == 0 or e == args.epochs]
    return ([0] if start_epoch == 1 else []) + epochs


def settings_of(args):
    """The run's settings stored in every checkpoint and compared on --resume (a curve's own
    settings only for a curve)."""
    settings = {"model": args.model, "dataset": args.dataset, "seed": args.seed, "lr": args.lr,
                "momentum": args.momentum, "wd": args.wd, "batch_size": args.batch_size,
                "transform": data.resolve_transform(args.dataset, args.transform)}
    if args.curve:
        settings.update(curve=args.curve, num_bends=args.num_bends, fix_start=args.fix_start,
                        fix_end=args.fix_end, init_linear=not args.init_linear_off)
    return settings


def resume_state(args, model, optimizer):
    """Load ``--resume`` into ``model`` and ``optimizer``; return the first epoch to train and the
    training time (s) of the epochs before it.

    Every part of the file is checked before use: a mismatching setting, a malformed epoch,
    optimizer or RNG state is one error line, never a traceback or a silently different run."""
    what = f"--resume file '{args.resume}'"
    checkpoint = utils.load_checkpoint(args.resume, "--resume file")
    epoch = checkpoint.get("epoch")
    if "optimizer_state" not in checkpoint or not isinstance(epoch, int) or isinstance(epoch, bool) \
            or epoch < 0:
        raise UserError(f"{what} has no optimizer state or no valid epoch; "
                        f"give a checkpoint-<epoch>.pt written by train.py")
    ours = settings_of(args)
    for key in RUN_SETTINGS + CURVE_SETTINGS:
        older = key in RUN_SETTINGS and key not in checkpoint  # written before the setting existed
        if not older and checkpoint.get(key) != ours.get(key):
            raise UserError(f"{what} was written with --{key}={checkpoint.get(key)}, this run has "
                            f"--{key}={ours.get(key)}; resume with the same "
                            f"settings, or start a new run in another --dir")
    for key in ("init_start", "init_end") if args.curve else ():
        given = getattr(args, key) and os.path.abspath(getattr(args, key))
        if key in checkpoint and checkpoint[key] != given:
            raise UserError(f"{what} is a curve initialised with --{key}={checkpoint[key]}, this run "
                            f"has --{key}={given}; resume with the same end-points, or start a new "
                            f"run in another --dir")
    utils.load_model_state(model, checkpoint, args.resume, args.model)
    try:
        optimizer.load_state_dict(checkpoint["optimizer_state"])
        for group in optimizer.param_groups:
            for p in group["params"]:
                buffer = optimizer.state.get(p, {}).get("momentum_buffer")
                if buffer is not None and (buffer.shape != p.shape
                                           or not torch.isfinite(buffer).all()):
                    raise ValueError("momentum buffer of the wrong shape or not finite")
        if "rng_state" in checkpoint:
            torch.set_rng_state(checkpoint["rng_state"])
    except (ValueError, TypeError, KeyError, IndexError, RuntimeError, AttributeError) as err:
        raise UserError(f"{what} has a malformed optimizer or RNG state ({err}); "
                        f"give a checkpoint-<epoch>.pt written by train.py") from None
    if epoch + 1 > args.epochs:
        raise UserError(f"{what} is already at epoch {epoch}; "
                        f"raise --epochs above it to train further")
    return epoch + 1, float(checkpoint.get("training_time", 0.0))


def record_command(folder):
    """Append this command to ``command.sh`` (with its ``torchrun`` launch, if any): the folder
    keeps every command that wrote to it."""
    path = os.path.join(folder, "command.sh")
    command = distributed.launcher() + " " + " ".join(
        shlex.quote(a) for a in [os.path.basename(sys.argv[0])] + sys.argv[1:])
    previous = open(path).read() if os.path.isfile(path) else ""
    utils.write_text(path, previous + command + "\n")


def check_finite(epoch, model, train_res, test_res, last_saved):
    """Stop a diverged run: non-finite loss or weights end training, keeping the last finite
    checkpoint (the diverged epoch is never saved)."""
    finite = all(np.isfinite(v) for v in (train_res["loss"], test_res["nll"]))
    if finite and all(torch.isfinite(p).all() for p in model.parameters()):
        return
    raise distributed.SharedError(
        f"training diverged in epoch {epoch} (train loss {train_res['loss']}, test nll "
        f"{test_res['nll']}); nothing of epoch {epoch} was saved, the last finite checkpoint is "
        f"{last_saved}; lower --lr and start again")


def build(args, device, generator):
    """The training loader, the test split, the model, its optimizer and the checkpoints'
    metadata, as the flags ask."""
    loader, num_classes = data.train_loader(args.dataset, args.data_path, args.batch_size,
                                            args.num_workers, args.transform, generator=generator,
                                            part=distributed.rank(), parts=distributed.world_size())
    test = data.load_split(args.dataset, args.data_path, False, args.transform)
    input_shape = tuple(test[0].shape[1:])
    metadata = {**settings_of(args), "epochs": args.epochs, "num_classes": num_classes,
                 "input_shape": list(input_shape)}
    if args.curve:
        model = build_curve(args, num_classes, input_shape, device)
        metadata.update(init_start=args.init_start and os.path.abspath(args.init_start),
                        init_end=args.init_end and os.path.abspath(args.init_end))
    else:
        model = models.build_model(args.model, num_classes, input_shape).to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    # a curve's weight decay acts on w(t) (curves.Curve.weight_decay), not in the optimizer
    optimizer = torch.optim.SGD(trainable, lr=args.lr, momentum=args.momentum,
                                weight_decay=0.0 if args.curve else args.wd, fused=True)
    if args.curve:
        model.attach(optimizer)
    return loader, test, model, optimizer, metadata


def check_curve_flags(args):
    """The curve flags: a known type, enough bends, a checkpoint for each fixed end, a bend to
    train; without --curve, none of them."""
    if args.curve is None:
        given = [f"--{flag}" for flag in CURVE_FLAGS if getattr(args, flag)]
        if given:
            raise UserError(f"{', '.join(given)} only apply to a curve; add --curve=Bezier (or "
                            f"PolyChain) or drop them")
        return
    curves.check_curve(args.curve, args.num_bends)
    for end in ("start", "end"):
        if getattr(args, f"fix_{end}") and not getattr(args, f"init_{end}"):
            raise UserError(f"--fix_{end} keeps the curve's {end} at the end-point given by "
                            f"--init_{end}; give --init_{end}=<checkpoint written by train.py>")
    if args.num_bends == 2 and args.fix_start and args.fix_end:
        raise UserError("--num_bends=2 with --fix_start and --fix_end leaves no bend to train (the "
                        "straight line); give --num_bends=3 or more, or free an end")


def load_end(args, end, num_classes, input_shape):
    """The end-point of ``--init_<end>``, checked to be a ``--model`` network of ``--dataset``."""
    path = getattr(args, f"init_{end}")
    checkpoint = utils.load_checkpoint(path, f"--init_{end} checkpoint")
    if checkpoint.get("curve"):
        raise UserError(f"--init_{end} '{path}' is a {checkpoint['curve']} curve, not an end-point; "
                        f"give a checkpoint of an ordinary train.py run")
    if checkpoint.get("dataset", args.dataset) != args.dataset:
        raise UserError(f"--init_{end} '{path}' was trained on {checkpoint['dataset']}, this curve "
                        f"is trained on --dataset={args.dataset}; connect end-points of one data set")
    model = models.build_model(args.model, num_classes, input_shape)
    return utils.load_model_state(model, checkpoint, path, args.model)


def build_curve(args, num_classes, input_shape, device):
    """The curve of the flags: every bend initialised as a fresh network (seeded), the ends
    replaced by ``--init_start`` / ``--init_end`` when given, the interior bends on the straight
    line between the ends unless ``--init_linear_off``."""
    nets = [models.build_model(args.model, num_classes, input_shape).to(device)
            for _ in range(args.num_bends)]
    fixed = [j for j, flag in ((0, args.fix_start), (args.num_bends - 1, args.fix_end)) if flag]
    curve = curves.Curve(nets[0], args.curve, args.num_bends, fixed, weight_decay=args.wd)
    for j, net in enumerate(nets[1:], 1):
        curve.set_bend(j, net.parameters())
    for j, end in ((0, "start"), (args.num_bends - 1, "end")):
        if getattr(args, f"init_{end}"):
            curve.set_bend(j, load_end(args, end, num_classes, input_shape).parameters())
    if not args.init_linear_off:
        curve.init_linear()
    return curve


def train_one_epoch(args, epoch, loader, generator, model, optimizer, device):
    """Epoch ``epoch``: its learning rate, its data order (a function of seed and epoch), one pass;
    the learning rate and the training statistics. Under ``torchrun`` the random numbers of the
    training itself (dropout) are a function of seed, epoch and rank. A curve draws its ``t`` per
    mini-batch from a generator fixed by seed and epoch (the same on every rank) and adds the
    weight decay of ``w(t)``, ``0.5 wd ||w(t)||²``, to the loss."""
    lr = utils.learning_rate_schedule(args.lr, epoch - 1, args.epochs)
    for group in optimizer.param_groups:
        group["lr"] = lr
    generator.set_state(epoch_generator(args.seed, epoch).get_state())
    if distributed.active():
        torch.manual_seed(derived_seed(args.seed, epoch, RANK_STREAM, distributed.rank()))
    if args.curve:
        model.generator.manual_seed(derived_seed(args.seed, epoch, CURVE_T_STREAM))
    return lr, utils.train_epoch(loader, model, optimizer, device, desc=f"epoch {epoch}/{args.epochs}")


def test_statistics(args, model, test, train_x):
    """Test loss and accuracy after an epoch: of the network, or of a curve's point ``t = 0.5``
    with its BatchNorm statistics recomputed on the training set (``train_x``)."""
    if not args.curve:
        return evaluation.evaluate(model, *test)
    net = curves.network(model, 0.5)
    evaluation.recompute_batchnorm(net, train_x)
    return evaluation.evaluate(net, *test)


def prepare(args, generator):
    """The checks, the device, what ``build`` makes and the first epoch to train (after
    ``--resume``)."""
    data.check_dataset(args.dataset)
    data.resolve_transform(args.dataset, args.transform)
    models.check_model(args.model)
    check_curve_flags(args)
    device = utils.select_device(args.cuda, args.device)
    utils.check_output_dir(args.dir, ["command.sh"] + [f"checkpoint-{e}.pt"
                                                       for e in saved_epochs(args, 1)])
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    loader, test, model, optimizer, metadata = build(args, device, generator)
    start_epoch, metadata["training_time"] = (1, 0.0) if args.resume is None else \
        resume_state(args, model, optimizer)
    check_other_runs(args, metadata, start_epoch)
    return device, loader, test, model, optimizer, metadata, start_epoch


def check_other_runs(args, metadata, start_epoch):
    """Refuse to replace a checkpoint of another run: each ``checkpoint-<epoch>.pt`` this run will
    write that already exists must have been written with the settings its weights depend on, so
    that it is the file this run writes again, not another run's lost: ``RUN_SETTINGS`` and
    ``--epochs`` (the learning-rate schedule), or for ``checkpoint-0.pt``, the initialisation,
    ``INIT_SETTINGS`` (so that a run with more epochs may share its folder); and a curve's
    settings and end-points."""
    for epoch in saved_epochs(args, start_epoch):
        path = os.path.join(args.dir, f"checkpoint-{epoch}.pt")
        if not os.path.exists(path):
            continue
        try:
            theirs = utils.load_checkpoint(path, mmap=True)
        except UserError:
            raise UserError(f"'{path}' is not a checkpoint of train.py and this run would replace "
                            f"it; give another --dir, or move the file away") from None
        keys = RUN_SETTINGS + ("epochs",) if epoch else INIT_SETTINGS
        differ = [key for key in keys + ("init_start", "init_end")
                  if key in theirs and theirs[key] != metadata.get(key)]
        differ += [key for key in CURVE_SETTINGS if theirs.get(key) != metadata.get(key)]
        if differ:
            settings = ", ".join(f"--{key}={theirs.get(key)} there, {metadata.get(key)} here"
                                 for key in differ)
            raise UserError(f"'{path}' is another run's checkpoint ({settings}) and this run would "
                            f"replace it; give another --dir, or move it away")


def data_parallel(model, device):
    """``model`` wrapped for data-parallel training under ``torchrun`` (itself otherwise). A curve
    stays itself and runs its model wrapped: the gradient of ``w(t)`` is what the ranks average
    (``curves.Curve``); its model's BatchNorm running statistics, which no checkpoint holds and
    no evaluation uses (each point's are recomputed), are not broadcast at every step."""
    if not distributed.active():
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    if isinstance(model, curves.Curve):
        model.run_with(torch.nn.parallel.DistributedDataParallel(
            model.model, device_ids=device_ids, broadcast_buffers=False))
        return model
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def run(args):
    """Train as ``train.py`` was asked to (``args`` as its parser gives them)."""
    utils.reuse_freed_memory()
    generator = torch.Generator()
    device, loader, test, model, optimizer, metadata, start_epoch = distributed.agree(
        lambda: prepare(args, generator))
    test = tuple(distributed.shard(t) for t in test)
    train_x = batchnorm_data(args, model)
    trained = data_parallel(model, device)
    if args.curve:
        print(f"{args.curve} curve of {args.num_bends} bends; the test columns are its point "
              f"t = 0.5")

    def save(epoch):
        if not distributed.is_main():
            return os.path.join(args.dir, f"checkpoint-{epoch}.pt")
        return utils.save_checkpoint(args.dir, epoch, model_state=model.state_dict(),
                                     optimizer_state=optimizer.state_dict(),
                                     rng_state=torch.get_rng_state(), **metadata)

    if distributed.is_main():
        record_command(args.dir)
    last_saved = save(0) if args.resume is None else args.resume
    to_save = saved_epochs(args, start_epoch)
    for epoch in range(start_epoch, args.epochs + 1):
        timer = utils.Timer()
        lr, train_res = train_one_epoch(args, epoch, loader, generator, trained, optimizer, device)
        metadata["training_time"] += timer()
        test_res = test_statistics(args, model, test, train_x)
        check_finite(epoch, model, train_res, test_res, last_saved)
        if epoch in to_save:
            last_saved = save(epoch)
        row = [epoch, lr, train_res["loss"], train_res["accuracy"], test_res["nll"],
               test_res["accuracy"], timer()]
        table = tabulate([row], COLUMNS, tablefmt="simple", floatfmt="9.4f").split("\n")
        print("\n".join(table if epoch == start_epoch else table[2:]), flush=True)
    print(f"saved {last_saved}")


def batchnorm_data(args, model):
    """This rank's training images for a curve's BatchNorm statistics at ``t = 0.5`` (None where
    there is no curve or no BatchNorm)."""
    if not (args.curve and evaluation.has_batchnorm(model.model)):
        return None
    x, _ = data.load_split(args.dataset, args.data_path, True, args.transform)
    return distributed.shard(x).to(next(model.parameters()).device)
