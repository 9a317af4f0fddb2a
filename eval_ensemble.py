"""WA(n) ensembling (paper, Section 6): hybrids that share the base model's lower layers, against
the plain ensemble of the same checkpoints (reference CLI). Writes ensemble.png and ens_stat.npz
to --dir."""
import cli


def build_parser():
    """Every flag, with its default and one line of help."""
    parser = cli.ArgumentParser(description=__doc__,
                                epilog=cli.TORCHRUN_EPILOG.format(script="eval_ensemble.py"))
    parser.add_argument("--dir", default="/tmp/eval_ensemble",
                        help="output folder (ens_stat.npz, ensemble.png)")
    cli.add_data_arguments(parser)
    parser.add_argument("--model", required=True, help=f"one of {', '.join(cli.MODELS)}")
    parser.add_argument("--name", required=True,
                        help="substring of the checkpoint file names to ensemble (e.g. 400)")
    parser.add_argument("--layer", type=int, required=True,
                        help="layer whose features the members are adjusted to (forward(x, N=layer)); "
                             "README lists the valid --layer/--layer_ind pairs and the n of WA(n)")
    parser.add_argument("--layer_ind", type=int, required=True,
                        help="index in parameters() of the weight that is adjusted (may be negative)")
    parser.add_argument("--model_paths", required=True, help="folder searched for checkpoints")
    parser.add_argument("--base", default=None, help="checkpoint of the base model "
                        "(default: the first matching checkpoint by path)")
    parser.add_argument("--max_models", type=cli.number(int, minimum=1), default=7,
                        help="at most this many checkpoints, the base first")
    cli.add_evaluation_arguments(parser)
    return parser


def main(argv=None):
    cli.delegate("wa_ensemble", build_parser().parse_args(argv))


if __name__ == "__main__":
    cli.run(main)
