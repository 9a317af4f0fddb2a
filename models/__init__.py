"""Model registry: every network of the reference README, built for a data set's input shape."""
import math

from utils import UserError, load_checkpoint, load_model_state
from .dense import (LinearOneLayer, LinearOneLayer100, LinearOneLayer500, LinearOneLayer1000,
                    LinearOneLayer2000, LinearNoBias, Linear3NoBias, Linear5NoBias, Linear7NoBias)
from .preresnet import PreResNet110
from .vgg import VGG16

MODELS = {cls.__name__: cls for cls in (
    LinearOneLayer, LinearOneLayer100, LinearOneLayer500, LinearOneLayer1000, LinearOneLayer2000,
    Linear3NoBias, Linear5NoBias, Linear7NoBias, VGG16, PreResNet110)}


def check_model(name):
    """Raise a one-line error for an unknown model name."""
    if name not in MODELS:
        raise UserError(f"unknown model '{name}'; choose one of: {', '.join(MODELS)}")


def build_model(name, num_classes, input_shape):
    """Instantiate model ``name`` for images of ``input_shape`` (C, H, W) and ``num_classes`` classes.

    Dense models take any input (their input size is ``C*H*W``); the conv nets need 32x32 images.
    """
    check_model(name)
    cls = MODELS[name]
    channels, height, width = input_shape
    if hasattr(cls, "input_size"):
        if (height, width) != (cls.input_size, cls.input_size):
            raise UserError(
                f"model {name} needs {cls.input_size}x{cls.input_size} images, but the data set has "
                f"{height}x{width}; use a dense model (e.g. LinearOneLayer) or a CIFAR data set")
        return cls(num_classes=num_classes, in_channels=channels)
    return cls(num_classes=num_classes, input_dim=math.prod(input_shape))


def load_model(name, path, num_classes, input_shape, what="checkpoint", dataset=None):
    """Build model ``name`` and load the weights of checkpoint ``path`` (checked key by key), a
    network trained on ``dataset`` when given (where the checkpoint records its data set)."""
    checkpoint = load_checkpoint(path, what)
    if dataset is not None and checkpoint.get("dataset", dataset) != dataset:
        raise UserError(f"{what} '{path}' was trained on {checkpoint['dataset']}, not on "
                        f"--dataset={dataset}; give networks trained on this data set, or its "
                        f"--dataset")
    return load_model_state(build_model(name, num_classes, input_shape), checkpoint, path, name)


__all__ = ["MODELS", "build_model", "check_model", "load_model", "LinearNoBias", *MODELS]
