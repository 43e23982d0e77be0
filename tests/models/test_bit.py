"""BiT R50x1: the official .npz naming, the loader, and agreement with an independent PyTorch ResNet-v2.

The PyTorch network below is written from the official ``bit_pytorch/models.py`` description
(pre-activation bottlenecks, GroupNorm(32), weight-standardised convs, stride on the 3x3 conv, a 1x1
projection of the pre-activated input in each block's first unit, root 7x7/2 + pad 1 + 3x3/2 max-pool).
A weight file with the official variable names is written from *its* random weights, loaded into the
Keras model with ``load_bit_npz``, and both networks must give the same logits.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from covidct.errors import CovidctError
from covidct.models import build_model
from covidct.models.bit import load_bit_npz

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

UNITS = (3, 4, 6, 3)  # ResNet-50


class StdConv2d(nn.Conv2d):
    def forward(self, x):
        w = self.weight
        v, m = torch.var_mean(w, dim=[1, 2, 3], keepdim=True, unbiased=False)
        return F.conv2d(x, (w - m) / torch.sqrt(v + 1e-10), None, self.stride, self.padding)


class Unit(nn.Module):
    def __init__(self, cin, cout, cmid, stride):
        super().__init__()
        self.gn1, self.conv1 = nn.GroupNorm(32, cin), StdConv2d(cin, cmid, 1, bias=False)
        self.gn2, self.conv2 = nn.GroupNorm(32, cmid), StdConv2d(cmid, cmid, 3, stride, 1, bias=False)
        self.gn3, self.conv3 = nn.GroupNorm(32, cmid), StdConv2d(cmid, cout, 1, bias=False)
        self.proj = StdConv2d(cin, cout, 1, stride, bias=False) if (stride != 1 or cin != cout) else None

    def forward(self, x):
        out = F.relu(self.gn1(x))
        residual = self.proj(out) if self.proj is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.gn2(out)))
        out = self.conv3(F.relu(self.gn3(out)))
        return out + residual

    def official_arrays(self, prefix):
        hwio = lambda t: t.detach().numpy().transpose(2, 3, 1, 0)  # noqa: E731 - OIHW → HWIO
        arrays = {}
        for part, gn, conv in (("a", self.gn1, self.conv1), ("b", self.gn2, self.conv2), ("c", self.gn3, self.conv3)):
            arrays[f"{prefix}/{part}/standardized_conv2d/kernel"] = hwio(conv.weight)
            arrays[f"{prefix}/{part}/group_norm/gamma"] = gn.weight.detach().numpy()
            arrays[f"{prefix}/{part}/group_norm/beta"] = gn.bias.detach().numpy()
        if self.proj is not None:
            arrays[f"{prefix}/a/proj/standardized_conv2d/kernel"] = hwio(self.proj.weight)
        return arrays


class ResNetV2(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.root = StdConv2d(3, 64, 7, 2, 3, bias=False)
        blocks, cin = [], 64
        for b, n in enumerate(UNITS):
            cmid = 64 * 2**b
            units = [Unit(cin, 4 * cmid, cmid, 2 if b > 0 else 1)] + [Unit(4 * cmid, 4 * cmid, cmid, 1) for _ in range(n - 1)]
            blocks.append(nn.Sequential(*units))
            cin = 4 * cmid
        self.blocks = nn.ModuleList(blocks)
        self.gn = nn.GroupNorm(32, 2048)
        self.head = nn.Conv2d(2048, num_classes, 1)
        # Non-trivial GroupNorm affine parameters, so a gamma/beta mix-up cannot go unnoticed.
        gen = torch.Generator().manual_seed(0)
        for module in self.modules():
            if isinstance(module, nn.GroupNorm):
                module.weight.data = 1 + 0.2 * torch.randn(module.weight.shape, generator=gen)
                module.bias.data = 0.1 * torch.randn(module.bias.shape, generator=gen)

    def forward(self, x):
        x = F.max_pool2d(F.pad(self.root(x), (1, 1, 1, 1)), 3, 2)
        for block in self.blocks:
            x = block(x)
        x = F.relu(self.gn(x)).mean(dim=(2, 3), keepdim=True)
        return self.head(x)[:, :, 0, 0]

    def official_arrays(self):
        arrays = {"resnet/root_block/standardized_conv2d/kernel": self.root.weight.detach().numpy().transpose(2, 3, 1, 0)}
        for b, block in enumerate(self.blocks, start=1):
            for u, unit in enumerate(block, start=1):
                arrays.update(unit.official_arrays(f"resnet/block{b}/unit{u:02d}"))
        arrays["resnet/group_norm/gamma"] = self.gn.weight.detach().numpy()
        arrays["resnet/group_norm/beta"] = self.gn.bias.detach().numpy()
        arrays["resnet/head/conv2d/kernel"] = self.head.weight.detach().numpy().transpose(2, 3, 1, 0)
        arrays["resnet/head/conv2d/bias"] = self.head.bias.detach().numpy()
        return arrays


@pytest.fixture(scope="module")
def official():
    torch.manual_seed(0)
    net = ResNetV2(num_classes=3).eval()
    return net, net.official_arrays()


@pytest.fixture(scope="module")
def npz_path(official, tmp_path_factory):
    path = tmp_path_factory.mktemp("bit") / "BiT-S-R50x1.npz"
    np.savez(path, **official[1])
    return path


@pytest.fixture(scope="module")
def rgb_model():
    """Built once for the module (a BiT build takes seconds); each test loads what it needs."""
    return build_model("bit_r50x1", input_shape=(64, 64, 3), num_classes=3)


def test_official_file_has_the_expected_names_and_sizes(official):
    net, arrays = official
    # 1 root conv + per unit (3 convs + 3 gammas + 3 betas) + 4 projections + final GN (2) + head (2).
    assert len(arrays) == 1 + 9 * sum(UNITS) + 4 + 2 + 2 == 153
    assert arrays["resnet/block1/unit01/a/proj/standardized_conv2d/kernel"].shape == (1, 1, 64, 256)
    assert arrays["resnet/block4/unit03/b/standardized_conv2d/kernel"].shape == (3, 3, 512, 512)
    assert arrays["resnet/head/conv2d/kernel"].shape == (1, 1, 2048, 3)
    # The backbone has 23,500,352 parameters (ResNet-50 v2 without BN running statistics).
    backbone = sum(a.size for k, a in arrays.items() if not k.startswith("resnet/head"))
    assert backbone == 23_500_352


def test_load_bit_npz_matches_the_pytorch_reference(official, npz_path, rgb_model):
    net, arrays = official
    model = load_bit_npz(rgb_model, npz_path, load_head=True)
    # Every weight of the Keras model came from the file: same total count.
    assert model.count_params() == sum(a.size for a in arrays.values())
    np.testing.assert_array_equal(
        model.get_layer("block2_unit01_proj_conv").kernel.numpy(),
        arrays["resnet/block2/unit01/a/proj/standardized_conv2d/kernel"],
    )
    np.testing.assert_array_equal(
        model.get_layer("block3_unit05_b_gn").gamma.numpy(), arrays["resnet/block3/unit05/b/group_norm/gamma"]
    )
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    ours = keras.ops.convert_to_numpy(model(x, training=False))
    with torch.no_grad():
        reference = net(torch.from_numpy(x.transpose(0, 3, 1, 2) / 127.5 - 1.0)).numpy()
    np.testing.assert_allclose(ours, reference, rtol=1e-3, atol=1e-3 * np.abs(reference).max())
    assert not np.allclose(ours[0], ours[1])


def test_grayscale_input_equals_rgb_input_with_three_equal_channels(npz_path, rgb_model):
    # weights=<.npz path> loads the backbone through load_bit_npz.
    gray = build_model("bit_r50x1", input_shape=(64, 64, 1), num_classes=3, weights=str(npz_path))
    rgb = load_bit_npz(rgb_model, npz_path)
    rgb.get_layer("logits").set_weights(gray.get_layer("logits").get_weights())
    x = np.random.default_rng(1).uniform(0, 255, (1, 64, 64, 1)).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(gray(x)), keras.ops.convert_to_numpy(rgb(np.repeat(x, 3, axis=-1))), rtol=1e-5
    )


def test_missing_or_misshaped_keys_are_named_and_nothing_is_loaded(official, tmp_path, rgb_model):
    _, arrays = official
    model = rgb_model
    before = model.get_layer("root_conv").kernel.numpy().copy()

    missing = dict(arrays)
    del missing["resnet/block3/unit02/b/group_norm/beta"]
    np.savez(tmp_path / "missing.npz", **missing)
    with pytest.raises(CovidctError, match=r"1 missing key\(s\), e\.g\. resnet/block3/unit02/b/group_norm/beta"):
        load_bit_npz(model, tmp_path / "missing.npz")

    misshaped = dict(arrays)
    misshaped["resnet/block1/unit02/c/standardized_conv2d/kernel"] = np.zeros((1, 1, 64, 128), "float32")
    np.savez(tmp_path / "misshaped.npz", **misshaped)
    with pytest.raises(CovidctError, match=r"block1/unit02/c/standardized_conv2d/kernel: file \(1, 1, 64, 128\)"):
        load_bit_npz(model, tmp_path / "misshaped.npz")

    np.testing.assert_array_equal(model.get_layer("root_conv").kernel.numpy(), before)
    with pytest.raises(CovidctError, match="does not exist"):
        load_bit_npz(model, tmp_path / "nope.npz")


def test_numbered_conv_names_of_some_released_files_are_accepted(official, tmp_path, rgb_model):
    _, arrays = official
    renamed = {k.replace("block2/unit01/a/standardized_conv2d/", "block2/unit01/a/standardized_conv2d_7/"): v
               for k, v in arrays.items()}  # fmt: skip
    np.savez(tmp_path / "renamed.npz", **renamed)
    model = load_bit_npz(rgb_model, tmp_path / "renamed.npz")
    np.testing.assert_array_equal(
        model.get_layer("block2_unit01_a_conv").kernel.numpy(), arrays["resnet/block2/unit01/a/standardized_conv2d/kernel"]
    )


def test_weight_standardisation_makes_the_conv_invariant_to_kernel_scale_and_shift():
    from covidct.models.bit import StandardizedConv2D

    layer = StandardizedConv2D(4, 3, use_bias=False)
    x = np.random.default_rng(0).normal(size=(1, 8, 8, 2)).astype("float32")
    y1 = keras.ops.convert_to_numpy(layer(x))
    kernel = layer.kernel.numpy()
    layer.kernel.assign(3.0 * kernel + 0.5)
    y2 = keras.ops.convert_to_numpy(layer(x))
    np.testing.assert_allclose(y1, y2, rtol=1e-4, atol=1e-5)
    # The standardised kernel has zero mean and unit variance per output filter.
    standardized = (kernel - kernel.mean(axis=(0, 1, 2))) / np.sqrt(kernel.var(axis=(0, 1, 2)) + 1e-10)
    manual = keras.ops.convert_to_numpy(keras.ops.conv(x, standardized, padding="valid"))
    np.testing.assert_allclose(y1, manual, rtol=1e-4, atol=1e-5)


def test_freeze_backbone_and_zero_head(npz_path):
    model = build_model("bit_r50x1", input_shape=(32, 32, 1), num_classes=2, freeze_backbone=True, zero_head=True)
    assert [w.path for w in model.trainable_weights] == ["logits/kernel", "logits/bias"]
    assert not model.get_layer("logits").kernel.numpy().any()
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 1)).astype("float32")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model(x)), 0.0)
    # The head of the file (3 classes) does not fit this 2-class model: named, not a Keras traceback.
    with pytest.raises(CovidctError, match=r"resnet/head/conv2d/kernel: file \(2048, 3\) vs model \(2048, 2\)"):
        load_bit_npz(model, npz_path, load_head=True)
