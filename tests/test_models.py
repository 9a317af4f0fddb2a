"""Every model: output shape, parameter count and the reference's state_dict keys and shapes."""
import pytest
import torch

import models
from models.architecture import permute
from utils import UserError

CIFAR = (3, 32, 32)
EXPECTED = {  # name: (input shape, parameter count, {key: shape} subset)
    "LinearOneLayer": ((1, 28, 28), 1_590_010, {"fc.0.weight": (2000, 784), "fc.0.bias": (2000,),
                                               "fc.2.weight": (10, 2000), "fc.2.bias": (10,)}),
    "LinearOneLayer100": (CIFAR, 308_310, {"fc.0.weight": (100, 3072), "fc.2.weight": (10, 100)}),
    "LinearOneLayer500": (CIFAR, 1_541_510, {"fc.0.weight": (500, 3072)}),
    "LinearOneLayer1000": (CIFAR, 3_083_010, {"fc.0.weight": (1000, 3072)}),
    "LinearOneLayer2000": (CIFAR, 6_166_010, {"fc.0.weight": (2000, 3072)}),
    "Linear3NoBias": (CIFAR, 31_182_368, {"linear_layers.0.weight": (6144, 3072),
                                          "linear_layers.1.weight": (2000, 6144),
                                          "linear_layers.2.weight": (10, 2000)}),
    "Linear5NoBias": (CIFAR, 34_172_368, {"linear_layers.3.weight": (1000, 1000),
                                          "linear_layers.4.weight": (10, 1000)}),
    "Linear7NoBias": (CIFAR, 36_172_368, {"linear_layers.6.weight": (10, 1000)}),
    "VGG16": (CIFAR, 15_245_130, {"layer_blocks.0.0.weight": (64, 3, 3, 3),
                                  "layer_blocks.4.2.bias": (512,),
                                  "classifier.1.weight": (512, 512), "classifier.4.weight": (512, 512),
                                  "classifier.6.weight": (10, 512), "classifier.6.bias": (10,)}),
    "PreResNet110": (CIFAR, 1_730_522, {"conv1.weight": (16, 3, 3, 3),
                                        "layer3.17.conv2.weight": (64, 64, 3, 3),
                                        "layer2.0.downsample.0.weight": (32, 16, 1, 1),
                                        "fc.weight": (10, 64)}),
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_shapes_counts_and_keys(name):
    shape, count, keys = EXPECTED[name]
    torch.manual_seed(0)
    model = models.build_model(name, 10, shape)
    assert sum(p.numel() for p in model.parameters()) == count
    state = model.state_dict()
    for key, key_shape in keys.items():
        assert tuple(state[key].shape) == key_shape, key
    assert model.eval()(torch.randn(2, *shape)).shape == (2, 10)


def test_key_sets_are_the_references():
    dense = models.build_model("Linear7NoBias", 10, CIFAR).state_dict()
    assert list(dense) == [f"linear_layers.{i}.weight" for i in range(7)]
    vgg = list(models.build_model("VGG16", 100, CIFAR).state_dict())
    blocks = [(b, i) for b, n in enumerate([2, 2, 3, 3, 3]) for i in range(n)]
    assert vgg == [f"layer_blocks.{b}.{i}.{p}" for b, i in blocks for p in ("weight", "bias")] + \
        [f"classifier.{i}.{p}" for i in (1, 4, 6) for p in ("weight", "bias")]


@pytest.mark.parametrize("shape,inputs", [((1, 8, 8), 64), ((1, 28, 28), 784), (CIFAR, 3072)])
def test_dense_models_follow_the_data(shape, inputs):
    for name in ("LinearOneLayer", "LinearOneLayer500", "Linear3NoBias"):
        model = models.build_model(name, 100, shape)
        first = next(model.parameters())
        assert first.shape[1] == inputs
        assert model(torch.rand(3, *shape)).shape == (3, 100)


def test_hidden_features_and_forward_from():
    """The reference's ``forward(x, N)`` is hidden layer N's output, the features entering layer
    N + 1; ``forward_from(h, l)`` continues from the features entering layer l."""
    torch.manual_seed(0)
    model = models.build_model("Linear5NoBias", 10, (1, 8, 8))
    x = torch.rand(4, 1, 8, 8)
    h = x.flatten(1)
    for n, layer in enumerate(model.linear_layers[:-1]):
        h = torch.relu(layer(h))
        torch.testing.assert_close(model(x, N=n), h)
        torch.testing.assert_close(model.features(x, n + 1), h)
        torch.testing.assert_close(model.forward_from(h, n + 1), model(x))
    one = models.build_model("LinearOneLayer", 10, (1, 8, 8))
    torch.testing.assert_close(one.forward_from(one(x, N=0), 1), one(x))
    torch.testing.assert_close(one(x), one.fc(x.flatten(1)))  # the reference's modules, the same function


def description_cases():
    for name, (shape, _, _) in EXPECTED.items():
        yield name, (1, 8, 8) if shape != CIFAR and not name.startswith("VGG") else shape


@pytest.mark.parametrize("name,shape", list(description_cases()))
def test_a_permutation_of_every_group_keeps_the_function(name, shape):
    """Permuting the units of every hidden group (BatchNorm parameters and running statistics
    with them, PreResNet110's residual streams as one group each) leaves the outputs unchanged;
    every weight tensor but the last bias is touched by some group."""
    torch.manual_seed(0)
    model = models.build_model(name, 10, shape).double()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):  # statistics that are not the identity
            for tensor in (module.weight.data, module.bias.data, module.running_mean):
                tensor.normal_()
            module.running_var.uniform_(0.5, 2)
    model.eval()
    groups = model.architecture.groups
    generator = torch.Generator().manual_seed(1)
    perms = {g.name: torch.randperm(g.size, generator=generator) for g in groups}
    twin = models.build_model(name, 10, shape).double().eval()
    twin.load_state_dict(permute(model.state_dict(), groups, perms))
    x = torch.randn(3, *shape, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(twin(x), model(x), rtol=1e-10, atol=1e-10)
        assert not torch.equal(next(twin.parameters()), next(model.parameters()))
    touched = {key for g in groups for key, _ in g.axes}
    untouched = [k for k, v in model.state_dict().items() if k not in touched and v.dim() > 0]
    assert untouched == ([] if name.startswith("Linear") and "NoBias" in name else [untouched[-1]])
    assert untouched[-1:] in ([], ["fc.2.bias"], ["classifier.6.bias"], ["fc.bias"])


def test_descriptions():
    vgg = models.build_model("VGG16", 10, CIFAR).architecture
    assert [layer.kind for layer in vgg.layers] == ["conv"] * 13 + ["dense"] * 3
    assert vgg.layers[12].after == ("relu", "maxpool", "flatten") and vgg.layers[13].dropout == 0.5
    assert [g.size for g in vgg.groups][-3:] == [512, 512, 512] and vgg.reference_offset == 0
    resnet = models.build_model("PreResNet110", 10, CIFAR).architecture
    assert resnet.layers == () and len(resnet.groups) == 3 + 54
    streams = [g for g in resnet.groups if "stream" in g.name]
    assert [g.size for g in streams] == [16, 32, 64]
    assert ("layer1.5.bn1.running_var", 0) in streams[0].axes and ("fc.weight", 1) in streams[2].axes
    dense = models.build_model("Linear3NoBias", 10, (1, 8, 8)).architecture
    assert [g.size for g in dense.groups] == [6144, 2000] and dense.reference_offset == 1


def test_vgg_forward_returns_layer_inputs():
    torch.manual_seed(0)
    model = models.build_model("VGG16", 100, CIFAR).eval()
    x = torch.randn(2, *CIFAR)
    assert model(x).shape == (2, 100)
    inputs = [model(x, N=n) for n in range(16)]
    layers = [model.get_submodule(layer.weight.rsplit('.', 1)[0]) for layer in model.architecture.layers]
    assert [tuple(t.shape[1:2]) for t in inputs][:2] == [(3,), (64,)]
    torch.testing.assert_close(inputs[1], torch.relu(layers[0](x)))
    torch.testing.assert_close(inputs[2], torch.max_pool2d(torch.relu(layers[1](inputs[1])), 2))
    torch.testing.assert_close(inputs[14], torch.relu(layers[13](inputs[13])))
    torch.testing.assert_close(layers[15](inputs[15]), model(x))
    conv = layers[4]
    assert conv.bias.abs().max() == 0 and abs(conv.weight.std().item() - (2 / (9 * 256)) ** 0.5) < 3e-3


@pytest.mark.parametrize("name", ["VGG16", "PreResNet110"])
def test_conv_models_refuse_small_images(name):
    with pytest.raises(UserError, match="needs 32x32 images"):
        models.build_model(name, 10, (1, 8, 8))


def test_unknown_model_lists_names():
    with pytest.raises(UserError, match="Linear3NoBias"):
        models.build_model("ResNet50", 10, CIFAR)
