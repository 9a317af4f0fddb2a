"""Train an end-point network (reference CLI): SGD with momentum, the reference's learning-rate
schedule, checkpoints ``checkpoint-{epoch}.pt`` written atomically, exact ``--resume``. With
``--curve``, train a Bezier or PolyChain curve between two end-points instead (the flags of the
dnn-mode-connectivity repository)."""
import cli


def build_parser():
    """Every flag, with its default and one line of help."""
    parser = cli.ArgumentParser(description=__doc__,
                                epilog=cli.TORCHRUN_EPILOG.format(script="train.py"))
    parser.add_argument("--dir", default="/tmp/curve/", help="training directory (checkpoints)")
    cli.add_data_arguments(parser)
    parser.add_argument("--batch_size", type=cli.number(int, minimum=1, maximum=cli.MAX_BATCH), default=128,
                        help="mini-batch size of SGD")
    parser.add_argument("--num-workers", dest="num_workers", type=cli.number(int, minimum=0),
                        default=4, help="accepted for compatibility with the reference; used only "
                                        "by the augmented CIFAR training loader; in-memory data "
                                        "ignores it")
    parser.add_argument("--model", required=True, help=f"one of {', '.join(cli.MODELS)}")
    parser.add_argument("--resume", default=None,
                        help="checkpoint-<epoch>.pt to continue from, with the flags of the run "
                             "that wrote it")
    parser.add_argument("--epochs", type=cli.number(int, minimum=1), default=200,
                        help="number of training epochs")
    parser.add_argument("--save_freq", type=cli.number(int, minimum=1), default=50,
                        help="save a checkpoint every N epochs (and at the last)")
    parser.add_argument("--lr_init", "--lr", dest="lr", type=cli.number(float, above=0),
                        default=0.01, help="initial learning rate: flat for the first half of the "
                                           "epochs, then down linearly to 1%% of it at 90%%")
    parser.add_argument("--momentum", type=cli.number(float, minimum=0), default=0.9,
                        help="SGD momentum, in [0, 1)")
    parser.add_argument("--wd", type=cli.number(float, minimum=0), default=1e-4,
                        help="weight decay (L2 penalty of SGD)")
    parser.add_argument("--seed", type=cli.number(int, minimum=0, maximum=cli.MAX_SEED), default=1,
                        help="random seed: initial weights and every epoch's data order")
    curve = parser.add_argument_group(
        "trained curves (Garipov et al. 2018; docs/METHODS.md, \"Trained curves\")",
        "with --curve the run trains the bends of a curve between two end-points instead of a "
        "network; every other flag keeps its meaning, the weight decay acting on the weights at "
        "the t drawn for each mini-batch")
    curve.add_argument("--curve", default=None, help="Bezier or PolyChain")
    curve.add_argument("--num_bends", type=cli.number(int, maximum=cli.MAX_BENDS), default=3,
                       help="bends of the curve, its two ends included (3: one free bend)")
    curve.add_argument("--init_start", default=None,
                       help="checkpoint (train.py) that initialises the curve's start")
    curve.add_argument("--init_end", default=None,
                       help="checkpoint (train.py) that initialises the curve's end")
    curve.add_argument("--fix_start", action="store_true", help="keep the start fixed")
    curve.add_argument("--fix_end", action="store_true", help="keep the end fixed")
    curve.add_argument("--init_linear_off", action="store_true",
                       help="keep the free bends' random initialisation instead of placing them on "
                            "the straight line between the ends")
    cli.add_device_arguments(parser)
    return parser


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.momentum >= 1:
        parser.error(f"argument --momentum: must be below 1 (got {args.momentum})")
    return args


def main(argv=None):
    cli.delegate("training", parse_args(argv))


if __name__ == "__main__":
    cli.run(main)
