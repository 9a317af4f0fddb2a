"""Connect two end-points with a point finder and a connector; evaluate train/test loss and error
along the path (reference CLI). Writes curve.png and curve.npz to --dir.

Point finder + method = the paper's procedure, e.g. PointFinderStepWiseInverseOT + lin_connect is
"OT + WA" of Table 2 (README, "Connecting two end-points"). --point_finder=Bezier (or PolyChain)
with --curve_checkpoint evaluates a curve trained by train.py --curve the same way."""
import cli


def build_parser():
    """Every flag, with its default and one line of help."""
    parser = cli.ArgumentParser(description=__doc__,
                                epilog=cli.TORCHRUN_EPILOG.format(script="eval_curve.py"))
    parser.add_argument("--dir", default="/tmp/eval", help="output folder (curve.npz, curve.png)")
    parser.add_argument("--point_finder", required=True, help=", ".join(cli.FINDERS))
    parser.add_argument("--method", default="lin_connect",
                        help="connector: lin_connect (Eq. 5) or arc_connect (Eq. 6)")
    parser.add_argument("--beg_time", type=cli.number(float, minimum=0), default=0.0,
                        help="first t evaluated (0 is model 1)")
    parser.add_argument("--end_time", type=cli.number(float, above=0), default=None,
                        help="last t evaluated (default: where this finder reaches model 2 for "
                             "this model)")
    cli.add_data_arguments(parser)
    parser.add_argument("--model", required=True, help=f"one of {', '.join(cli.MODELS)}")
    parser.add_argument("--start", default=None,
                        help="checkpoint of model 1 (t = 0); for a trained curve optional, then "
                             "checked to be its fixed start")
    parser.add_argument("--end", default=None,
                        help="checkpoint of model 2 (the path's end); for a trained curve as --start")
    parser.add_argument("--curve_checkpoint", default=None,
                        help="with --point_finder=Bezier or PolyChain: the curve, a checkpoint of "
                             "train.py --curve")
    parser.add_argument("--num_points", type=cli.number(int, minimum=2, maximum=cli.MAX_POINTS),
                        default=61,
                        help="points evaluated, evenly spaced from --beg_time to --end_time")
    parser.add_argument("--repair", action="store_true",
                        help="REPAIR (Jordan et al. 2022): reset every hidden unit's pre-activation "
                             "mean and std at each point to the interpolation of the ends' values; "
                             "for paths of one segment: " + ", ".join(cli.repairable()))
    cli.add_evaluation_arguments(parser)
    return parser


def main(argv=None):
    cli.delegate("path_evaluation", build_parser().parse_args(argv))


if __name__ == "__main__":
    cli.run(main)
