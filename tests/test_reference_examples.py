"""Every example command of the reference README runs as written (the CLI contract), on small
synthetic data files in torchvision's formats under ``data/`` and randomly initialised checkpoints
at the README's paths. ``--cuda`` is dropped when no GPU is present; train.py examples run 1 epoch
instead of hundreds.
"""
import shlex

import pytest
import torch

import eval_curve
import eval_ensemble
import models
import train
from conftest import write_cifar, write_mnist

TRAIN = """
python3 train.py --dir=checkpoints/LinearOneLayer/chp1 --dataset=MNIST --data_path=data --model=LinearOneLayer --epochs=30 --seed=1 --cuda
python3 train.py --dir=checkpoints/LinearOneLayer100/chp1 --dataset=CIFAR10 --data_path=data --model=LinearOneLayer100 --epochs=400 --seed=1 --cuda
python3 train.py --dir=checkpoints/Linear3NoBias/chp1 --dataset=CIFAR10 --data_path=data --model=Linear3NoBias --epochs=400 --seed=1 --cuda
python3 train.py --dir=checkpoints/VGG16/chp1 --dataset=CIFAR10 --data_path=data --model=VGG16 --epochs=200 --seed=1 --cuda
"""

EVAL_CURVE = """
python3 eval_curve.py --dir=experiments/eval/LinearOneLayer100/PointFinderWithBias --point_finder=PointFinderWithBias --method=lin_connect --model=LinearOneLayer100 --end_time=1 --data_path=data --num_points=21 --start=checkpoints/LinearOneLayer100/chp1/checkpoint-400.pt --end=checkpoints/LinearOneLayer100/chp2/checkpoint-400.pt --cuda
python3 eval_curve.py --dir=experiments/eval/LinearOneLayer100/PointFinderInverseWithBias --point_finder=PointFinderInverseWithBias --method=arc_connect --model=LinearOneLayer100 --end_time=2 --data_path=data --num_points=21 --start=checkpoints/LinearOneLayer100/chp1/checkpoint-400.pt --end=checkpoints/LinearOneLayer100/chp2/checkpoint-400.pt --cuda
python3 eval_curve.py --dir=experiments/eval/LinearOneLayer100/PointFinderTransportation --point_finder=PointFinderTransportation --method=lin_connect --model=LinearOneLayer100 --end_time=1 --data_path=data --num_points=21 --start=checkpoints/LinearOneLayer100/chp1/checkpoint-400.pt --end=checkpoints/LinearOneLayer100/chp2/checkpoint-400.pt --cuda
python3 eval_curve.py --dir=experiments/eval/LinearOneLayer100/PointFinderInverseWithBiasOT --point_finder=PointFinderInverseWithBiasOT --method=lin_connect --model=LinearOneLayer100 --end_time=2 --data_path=data --num_points=21 --start=checkpoints/LinearOneLayer100/chp1/checkpoint-400.pt --end=checkpoints/LinearOneLayer100/chp2/checkpoint-400.pt --cuda
python3 eval_curve.py --dir=experiments/eval/Linear3NoBias/PointFinderSimultaneous --point_finder=PointFinderSimultaneous --method=lin_connect --model=Linear3NoBias --end_time=1 --data_path=data --num_points=21 --start=checkpoints/Linear3NoBias/chp1/checkpoint-400.pt --end=checkpoints/Linear3NoBias/chp2/checkpoint-400.pt --cuda
python3 eval_curve.py --dir=experiments/eval/Linear3NoBias/PointFinderStepWiseButterfly --point_finder=PointFinderStepWiseButterfly --method=arc_connect --model=Linear3NoBias --end_time=2 --data_path=data --num_points=21 --start=checkpoints/Linear3NoBias/chp1/checkpoint-400.pt --end=checkpoints/Linear3NoBias/chp2/checkpoint-400.pt --cuda
python3 eval_curve.py --dir=experiments/eval/Linear3NoBias/PointFinderStepWiseInverse --point_finder=PointFinderStepWiseInverse --method=lin_connect --model=Linear3NoBias --end_time=3 --data_path=data --num_points=31 --start=checkpoints/Linear3NoBias/chp1/checkpoint-400.pt --end=checkpoints/Linear3NoBias/chp2/checkpoint-400.pt --cuda
python3 eval_curve.py --dir=experiments/eval/Linear3NoBias/PointFinderStepWiseTransportation --point_finder=PointFinderStepWiseTransportation --method=lin_connect --model=Linear3NoBias --end_time=2 --data_path=data --num_points=21 --start=checkpoints/Linear3NoBias/chp1/checkpoint-400.pt --end=checkpoints/Linear3NoBias/chp2/checkpoint-400.pt --cuda
python3 eval_curve.py --dir=experiments/eval/Linear3NoBias/PointFinderStepWiseInverseOT --point_finder=PointFinderStepWiseInverseOT --method=lin_connect --model=Linear3NoBias --end_time=3 --data_path=data --num_points=31 --start=checkpoints/Linear3NoBias/chp1/checkpoint-400.pt --end=checkpoints/Linear3NoBias/chp2/checkpoint-400.pt --cuda
python3 eval_curve.py --dir=experiments/eval/VGG16lin/PointFinderStepWiseButterflyConvWBiasOT/12 --point_finder=PointFinderStepWiseButterflyConvWBiasOT --method=lin_connect --model=VGG16 --end_time=15 --data_path=data --num_points=61 --start=checkpoints/VGG16/chp1/checkpoint-400.pt --end=checkpoints/VGG16/chp2/checkpoint-400.pt
"""

EVAL_ENSEMBLE = """
python3 eval_ensemble.py --dir=experiments/eval_ensemble/Linear3NoBias/ --data_path=data --model=Linear3NoBias --name=400 --layer=1 --layer_ind=2 --model_paths=checkpoints/Linear3NoBias/
python3 eval_ensemble.py --dir=experiments/eval_ensemble/Linear3NoBias/ --data_path=data --model=Linear3NoBias --name=400 --layer=0 --layer_ind=1 --model_paths=checkpoints/Linear3NoBias/
python3 eval_ensemble.py --dir=experiments/eval_ensemble/Linear5NoBias/ --data_path=data --model=Linear5NoBias --name=400 --layer=3 --layer_ind=4 --model_paths=checkpoints/curves/Linear5NoBias/
python3 eval_ensemble.py --dir=experiments/eval_ensemble/Linear7NoBias/ --data_path=data --model=Linear7NoBias --name=400 --layer=5 --layer_ind=6 --model_paths=checkpoints/Linear7NoBias/
python3 eval_ensemble.py --dir=experiments/eval_ensemble/Linear7NoBias/ --data_path=data --model=Linear7NoBias --name=400 --layer=3 --layer_ind=4 --model_paths=checkpoints/Linear7NoBias/
python3 eval_ensemble.py --dir=experiments/eval_ensemble/VGG16cifar100w9/ --data_path=data --model=VGG16 --name=200 --layer=9 --layer_ind=-14 --model_paths=checkpoints/cifar100/VGG16 --dataset=CIFAR100
python3 eval_ensemble.py --dir=experiments/eval_ensemble/VGG16cifar100w10/ --data_path=data --model=VGG16 --name=200 --layer=10 --layer_ind=-12 --model_paths=checkpoints/cifar100/VGG16 --dataset=CIFAR100
python3 eval_ensemble.py --dir=experiments/eval_ensemble/VGG16cifar100w3/ --data_path=data --model=VGG16 --name=200 --layer=3 --layer_ind=-26 --model_paths=checkpoints/cifar100/VGG16 --dataset=CIFAR100
"""

CHECKPOINTS = [  # (model, classes, folder, epoch) of the README's end-points
    ("LinearOneLayer100", 10, "checkpoints/LinearOneLayer100/chp{}", 400),
    ("Linear3NoBias", 10, "checkpoints/Linear3NoBias/chp{}", 400),
    ("Linear5NoBias", 10, "checkpoints/curves/Linear5NoBias/chp{}", 400),
    ("Linear7NoBias", 10, "checkpoints/Linear7NoBias/chp{}", 400),
    ("VGG16", 100, "checkpoints/cifar100/VGG16/chp{}", 200),
    ("VGG16", 10, "checkpoints/VGG16/chp{}", 400),
]


def arguments(line):
    words = shlex.split(line)[2:]
    return [w for w in words if w != "--cuda" or torch.cuda.is_available()]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A project folder with data/ (MNIST, CIFAR10, CIFAR100 files) and the README's checkpoints."""
    root = tmp_path_factory.mktemp("reference")
    write_mnist(root / "data" / "MNIST" / "raw")
    write_cifar(str(root / "data"), "CIFAR10", n_per_batch=8)
    write_cifar(str(root / "data"), "CIFAR100", n_per_batch=12)
    for name, classes, folder, epoch in CHECKPOINTS:
        for seed in (1, 2):
            torch.manual_seed(seed)
            model = models.build_model(name, classes, (3, 32, 32))
            path = root / folder.format(seed)
            path.mkdir(parents=True)
            torch.save({"epoch": epoch, "model_state": model.state_dict()},
                       path / f"checkpoint-{epoch}.pt")
    return root


@pytest.fixture
def in_workdir(workdir, monkeypatch, no_cifar_md5):
    monkeypatch.chdir(workdir)
    import data
    data._torchvision_split.cache_clear()
    return workdir


EXAMPLES = ([(eval_curve.main, line, ["curve.npz", "curve.png"])
             for line in EVAL_CURVE.strip().splitlines()]
            + [(eval_ensemble.main, line, ["ens_stat.npz", "ensemble.png"])
               for line in EVAL_ENSEMBLE.strip().splitlines()]
            + [(train.main, line, ["checkpoint-1.pt"]) for line in TRAIN.strip().splitlines()])


@pytest.mark.parametrize("main,line,outputs", EXAMPLES, ids=[l.split()[1] + str(i) for i, (_, l, _)
                                                             in enumerate(EXAMPLES)])
def test_reference_example(in_workdir, main, line, outputs):
    args = arguments(line)
    if main is train.main:  # 1 epoch instead of hundreds
        args = [a for a in args if not a.startswith("--epochs=")] + ["--epochs=1"]
    main(args)
    out = next(a.split("=", 1)[1] for a in args if a.startswith("--dir="))
    for name in outputs:
        assert (in_workdir / out / name).exists(), name
