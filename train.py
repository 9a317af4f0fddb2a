"""Train an end-point network (reference CLI): SGD with momentum, the reference's learning-rate
schedule, checkpoints ``checkpoint-{epoch}.pt`` written atomically, exact ``--resume``."""
import argparse
import os
import shlex
import sys

import numpy as np
import torch
from tabulate import tabulate

import data
import models
import utils
from utils import UserError

COLUMNS = ["ep", "lr", "tr_loss", "tr_acc", "te_nll", "te_acc", "time"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", default="/tmp/curve/", help="training directory (checkpoints)")
    parser.add_argument("--dataset", default="CIFAR10", help=f"one of {', '.join(data.DATASETS)}")
    parser.add_argument("--data_path", default="data", help="folder holding the data set")
    parser.add_argument("--transform", default=None,
                        help="VGG or ResNet (CIFAR only; MNIST-like data sets and Digits use ToTensor)")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--num-workers", dest="num_workers", type=int, default=4,
                        help="loader workers (used only where augmentation runs per sample)")
    parser.add_argument("--model", required=True, help=f"one of {', '.join(models.MODELS)}")
    parser.add_argument("--resume", default=None, help="checkpoint to resume training from")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--save_freq", type=int, default=50, help="save every N epochs")
    parser.add_argument("--lr_init", "--lr", dest="lr", type=float, default=0.01)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--wd", type=float, default=1e-4, help="weight decay")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cuda", action="store_true", help="train on the GPU")
    parser.add_argument("--device", type=int, default=0, help="GPU index with --cuda")
    return parser.parse_args(argv)


def epoch_generator(seed, epoch):
    """A torch generator fixed by ``(seed, epoch)``: epoch ``e``'s data order never depends on history."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))


def main(argv=None):
    args = parse_args(argv)
    if args.epochs < 1:
        raise UserError(f"--epochs must be at least 1 (got {args.epochs})")
    if args.save_freq < 1:
        raise UserError(f"--save_freq must be at least 1 (got {args.save_freq})")
    if args.batch_size < 1:
        raise UserError(f"--batch_size must be at least 1 (got {args.batch_size})")
    data.check_dataset(args.dataset)
    models.check_model(args.model)
    device = utils.select_device(args.cuda, args.device)
    utils.prepare_dir(args.dir)
    command = "python3 " + " ".join(shlex.quote(a) for a in [os.path.basename(sys.argv[0])] + sys.argv[1:])
    utils.atomic_write(os.path.join(args.dir, "command.sh"),
                       lambda tmp: open(tmp, "w").write(command + "\n"))

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    generator = torch.Generator()
    loaders, num_classes = data.loaders(args.dataset, args.data_path, args.batch_size,
                                        args.num_workers, args.transform, generator=generator)
    test_x, test_y = data.load_split(args.dataset, args.data_path, False, args.transform)
    input_shape = tuple(test_x.shape[1:])
    model = models.build_model(args.model, num_classes, input_shape).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                                weight_decay=args.wd, fused=True)
    metadata = {"model": args.model, "dataset": args.dataset, "num_classes": num_classes,
                "input_shape": list(input_shape), "seed": args.seed}

    start_epoch = 1
    if args.resume is not None:
        checkpoint = utils.load_checkpoint(args.resume, "--resume file")
        if "optimizer_state" not in checkpoint or "epoch" not in checkpoint:
            raise UserError(f"--resume file '{args.resume}' has no optimizer state or epoch; "
                            f"give a checkpoint-<epoch>.pt written by train.py")
        utils.load_model_state(model, checkpoint, args.resume, args.model)
        optimizer.load_state_dict(checkpoint["optimizer_state"])
        start_epoch = checkpoint["epoch"] + 1
        if start_epoch > args.epochs:
            raise UserError(f"--resume file '{args.resume}' is already at epoch {checkpoint['epoch']}; "
                            f"raise --epochs above it to train further")
        if "rng_state" in checkpoint:
            torch.set_rng_state(checkpoint["rng_state"])
    else:
        utils.save_checkpoint(args.dir, 0, model_state=model.state_dict(),
                              optimizer_state=optimizer.state_dict(),
                              rng_state=torch.get_rng_state(), **metadata)

    for epoch in range(start_epoch, args.epochs + 1):
        timer = utils.Timer()
        lr = utils.learning_rate_schedule(args.lr, epoch - 1, args.epochs)
        for group in optimizer.param_groups:
            group["lr"] = lr
        generator.set_state(epoch_generator(args.seed, epoch).get_state())
        train_res = utils.train_epoch(loaders["train"], model, optimizer, device,
                                      desc=f"epoch {epoch}/{args.epochs}")
        test_res = utils.evaluate(model, test_x, test_y)
        if epoch % args.save_freq == 0 or epoch == args.epochs:
            utils.save_checkpoint(args.dir, epoch, model_state=model.state_dict(),
                                  optimizer_state=optimizer.state_dict(),
                                  rng_state=torch.get_rng_state(), **metadata)
        row = [epoch, lr, train_res["loss"], train_res["accuracy"], test_res["nll"],
               test_res["accuracy"], timer()]
        table = tabulate([row], COLUMNS, tablefmt="simple", floatfmt="9.4f").split("\n")
        print("\n".join(table if epoch == start_epoch else table[2:]), flush=True)


if __name__ == "__main__":
    utils.run_cli(main)
