"""SegNet structure (SPEC §2), padding, VGG16-BN import and model files."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import segscope
from segscope import SegNet, SegscopeError, load_model, save_model
from segscope.checkpoint import load_weights

#: The 37 layer names of the reference Caffe model, written out by hand.
NAMES = (
    ["data"]
    + ["conv1_1", "conv1_2", "pool1", "conv2_1", "conv2_2", "pool2"]
    + ["conv3_1", "conv3_2", "conv3_3", "pool3", "conv4_1", "conv4_2", "conv4_3", "pool4"]
    + ["conv5_1", "conv5_2", "conv5_3", "pool5"]
    + ["upsample5", "conv5_3_D", "conv5_2_D", "conv5_1_D"]
    + ["upsample4", "conv4_3_D", "conv4_2_D", "conv4_1_D"]
    + ["upsample3", "conv3_3_D", "conv3_2_D", "conv3_1_D", "upsample2", "conv2_2_D", "conv2_1_D"]
    + ["upsample1", "conv1_2_D", "conv1_1_D"]
)

#: Output channels at width 1 (SPEC §2), conv layers only, in forward order.
CHANNELS = {
    "conv1_1": 64, "conv1_2": 64, "conv2_1": 128, "conv2_2": 128,
    "conv3_1": 256, "conv3_2": 256, "conv3_3": 256,
    "conv4_1": 512, "conv4_2": 512, "conv4_3": 512,
    "conv5_1": 512, "conv5_2": 512, "conv5_3": 512,
    "conv5_3_D": 512, "conv5_2_D": 512, "conv5_1_D": 512,
    "conv4_3_D": 512, "conv4_2_D": 512, "conv4_1_D": 256,
    "conv3_3_D": 256, "conv3_2_D": 256, "conv3_1_D": 128,
    "conv2_2_D": 128, "conv2_1_D": 64, "conv1_2_D": 64,
}

#: Index of each encoder conv in torchvision's vgg16_bn().features (conv, bn, relu, ...).
VGG_CONV_INDEX = dict(zip(
    [n for n in CHANNELS if not n.endswith("_D")],
    [0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40], strict=True))


def _conv(model: SegNet, name: str) -> nn.Conv2d:
    m = getattr(model, name)
    return m if isinstance(m, nn.Conv2d) else m.conv


def test_layer_names_and_modules():
    model = SegNet(width=0.0625)
    assert model.layer_names == NAMES and len(NAMES) == 37
    assert [n for n, _ in model.named_children()] == NAMES[1:]
    for name in NAMES[1:]:
        m = model.layer(name)
        if name.startswith("pool"):
            assert isinstance(m, nn.MaxPool2d) and m.return_indices
        elif name.startswith("upsample"):
            assert isinstance(m, nn.MaxUnpool2d)
        elif name == "conv1_1_D":
            assert isinstance(m, nn.Conv2d) and m.out_channels == 3
        else:
            assert isinstance(m, nn.ReLU) and m is getattr(model, name).relu
    with pytest.raises(SegscopeError):
        model.layer("data")
    with pytest.raises(SegscopeError):
        model.layer("conv6_1")


def test_full_width_channels_follow_spec():
    model = SegNet(num_classes=5, width=1.0)
    for name, channels in CHANNELS.items():
        assert _conv(model, name).out_channels == channels, name
        assert _conv(model, name).kernel_size == (3, 3)
    assert _conv(model, "conv1_1_D").out_channels == 5
    assert _conv(model, "conv1_1").in_channels == 3


def test_width_multiplier_scales_every_layer():
    model = SegNet(width=0.25)
    for name, channels in CHANNELS.items():
        assert _conv(model, name).out_channels == channels // 4, name
    previous = 3
    for name in NAMES[1:]:  # every conv reads what the previous conv wrote
        if name in CHANNELS or name == "conv1_1_D":
            assert _conv(model, name).in_channels == previous, name
            previous = _conv(model, name).out_channels


def test_forward_runs_modules_in_registration_order(tiny_segnet):
    called: list[str] = []
    hooks = [getattr(tiny_segnet, n).register_forward_hook(
        lambda m, i, o, n=n: called.append(n)) for n in NAMES[1:]]
    tiny_segnet(torch.rand(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert called == NAMES[1:]


@pytest.mark.parametrize("size", [(32, 64), (37, 50), (65, 33)])
def test_odd_sizes_are_padded_and_cropped(tiny_segnet, size):
    torch.manual_seed(1)
    x = torch.rand(2, 3, *size)
    y = tiny_segnet(x)
    assert y.shape == (2, 3, *size)
    ph, pw = -(-size[0] // 32) * 32, -(-size[1] // 32) * 32
    padded = F.pad(x, (0, pw - size[1], 0, ph - size[0]), mode="replicate")
    assert torch.equal(tiny_segnet.pad(x), padded)
    torch.testing.assert_close(y, tiny_segnet(padded)[..., : size[0], : size[1]])


def test_forward_rejects_wrong_shape(tiny_segnet):
    with pytest.raises(SegscopeError):
        tiny_segnet(torch.rand(3, 32, 32))
    with pytest.raises(SegscopeError):
        tiny_segnet(torch.rand(1, 1, 32, 32))


def _vgg_state(width_ok: bool = True) -> dict[str, torch.Tensor]:
    """A torchvision-layout vgg16_bn state dict with random values (built by hand)."""
    g = torch.Generator().manual_seed(3)
    state: dict[str, torch.Tensor] = {}
    cin = 3
    for name, index in VGG_CONV_INDEX.items():
        cout = CHANNELS[name] if width_ok else CHANNELS[name] // 2
        state[f"features.{index}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * 0.05
        state[f"features.{index}.bias"] = torch.randn(cout, generator=g) * 0.1
        bn = f"features.{index + 1}"
        state[f"{bn}.weight"] = torch.rand(cout, generator=g) + 0.5
        state[f"{bn}.bias"] = torch.randn(cout, generator=g) * 0.1
        state[f"{bn}.running_mean"] = torch.randn(cout, generator=g) * 0.1
        state[f"{bn}.running_var"] = torch.rand(cout, generator=g) + 0.5
        state[f"{bn}.num_batches_tracked"] = torch.tensor(100)
        cin = cout
    state["classifier.0.weight"] = torch.zeros(4, 4)  # ignored
    return state


def test_vgg16_bn_from_safetensors_equals_pth(tmp_path):
    from safetensors.torch import save_file

    state = _vgg_state()
    torch.save(state, tmp_path / "vgg16_bn.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "vgg16_bn.safetensors"))
    torch.manual_seed(0)
    a = SegNet()
    torch.manual_seed(0)  # the same decoder initialisation
    b = SegNet()
    a.load_vgg16_bn(tmp_path / "vgg16_bn.pth")
    b.load_vgg16_bn(tmp_path / "vgg16_bn.safetensors")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    assert torch.equal(b.conv5_3.conv.weight, state["features.40.weight"])


def test_load_model_refuses_non_finite_weights_and_bad_metadata(tmp_path, tiny_segnet):
    from safetensors.torch import save_file

    from segscope.checkpoint import model_config, read_metadata

    with torch.no_grad():
        tiny_segnet.conv3_2.bn.running_var[1] = float("nan")
    path = save_model(tiny_segnet, tmp_path / "nan.safetensors")
    with pytest.raises(SegscopeError, match=r"NaN or infinite values \(in conv3_2.bn.running_var"):
        load_model(path)
    meta = read_metadata(path)
    assert model_config(meta) == {"num_classes": 3, "width": 0.0625,
                                  "class_names": ["background", "road", "markings"]}
    for bad, match in (({**meta, "model": "SegNet"}, "'model' = 'SegNet'"),
                       ({**meta, "model": {**meta["model"], "width": "1"}}, "width"),
                       ({**meta, "model": {**meta["model"], "num_classes": True}}, "num_classes"),
                       ([meta], "JSON list")):
        with pytest.raises(SegscopeError, match=match):
            model_config(bad, "x")
    weird = tmp_path / "weird.safetensors"
    save_file({"w": torch.zeros(1)}, str(weird), metadata={"segscope": '{"model": 3}'})
    with pytest.raises(SegscopeError, match="'model' = 3"):
        load_model(weird)


def test_vgg16_bn_import_and_normalisation_folding(tmp_path):
    state = _vgg_state()
    path = tmp_path / "vgg16_bn.pth"
    torch.save(state, path)
    model = SegNet()
    model.load_vgg16_bn(path, imagenet_normalisation=False)
    for name, index in VGG_CONV_INDEX.items():
        block = getattr(model, name)
        assert torch.equal(block.conv.weight, state[f"features.{index}.weight"]), name
        assert torch.equal(block.bn.running_var, state[f"features.{index + 1}.running_var"])
    folded = SegNet()
    folded.load_vgg16_bn(path)
    # conv1_1 on [0,1] pixels == torchvision's conv1_1 on (x - mean) / std, away from the
    # border (zero padding is zero in the normalised space, not in pixel space)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = torch.rand(1, 3, 12, 12)
    expected = F.conv2d((x - mean) / std, state["features.0.weight"], state["features.0.bias"],
                        padding=1)
    got = folded.conv1_1.conv(x)
    torch.testing.assert_close(got[..., 1:-1, 1:-1], expected[..., 1:-1, 1:-1],
                               rtol=1e-5, atol=1e-5)
    assert torch.equal(folded.conv1_2.conv.weight, model.conv1_2.conv.weight)


def test_vgg16_bn_wrong_file(tmp_path):
    path = tmp_path / "small.pth"
    torch.save(_vgg_state(width_ok=False), path)
    with pytest.raises(SegscopeError, match="shape"):
        SegNet().load_vgg16_bn(path)
    with pytest.raises(SegscopeError, match="not found"):
        SegNet().load_vgg16_bn(tmp_path / "missing.pth")
    torch.save({"classifier.0.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(SegscopeError, match="missing"):
        SegNet().load_vgg16_bn(tmp_path / "other.pth")


def test_save_load_round_trip(tiny_segnet, tmp_path):
    path = save_model(tiny_segnet, tmp_path / "m.safetensors", note="hello", step=7)
    model, meta = load_model(path)
    assert meta["note"] == "hello" and meta["step"] == 7
    assert meta["model"] == tiny_segnet.config()
    assert model.class_names == segscope.data.ROAD3 and not model.training
    for key, value in tiny_segnet.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    x = torch.rand(1, 3, 32, 48)
    assert torch.equal(model(x), tiny_segnet(x))
    assert path.read_bytes()[:8] != b"PK\x03\x04"  # not a zip/pickle file


@pytest.mark.parametrize("other", [dict(num_classes=3, width=0.125), dict(num_classes=5,
                                                                            width=0.0625)])
def test_loading_weights_of_another_model_fails(tiny_segnet, tmp_path, other):
    path = save_model(SegNet(**other), tmp_path / "other.safetensors")
    loaded, _ = load_model(path)
    assert loaded.num_classes == other["num_classes"] and loaded.width == other["width"]
    with pytest.raises(SegscopeError, match="does not fit"):
        load_weights(tiny_segnet, loaded.state_dict(), source=str(path))


def test_bad_checkpoint_files(tmp_path):
    with pytest.raises(SegscopeError, match="not found"):
        load_model(tmp_path / "nope.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(SegscopeError):
        load_model(junk)
