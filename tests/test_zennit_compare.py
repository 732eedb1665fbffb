"""segscope's LRP against zennit's on the same SegNet (optional: needs zennit).

zennit's AlphaBeta(alpha=1, beta=0) composite with the SequentialMergeBatchNorm canonizer;
max-pool and max-unpool fall to their gradients (route to / gather from the stored
indices), as in segscope. zennit 0.5's AlphaBeta clamps the bias with the weights, so
its z⁺ denominator holds b⁺ like SPEC §3; the comparison is run with biases and with
zeroed biases. Its stabilizer (ε·sign added to every denominator, default ε = 1e-6) is
the only difference from segscope's 0/0 = 0 guard; with the default the maps differ by
~3e-4 (relative L2) on this small network, whose denominators are small, so the
comparison uses ε = 1e-12. zennit's canonizer leaves each BatchNorm in place as
x / sqrt(1 + eps), not exactly the identity: with PyTorch's eps = 1e-5 and 25 BN layers
that scales zennit's map by ~2.5e-4, so the BN layers here get eps = 1e-12 (segscope
folds the BN with whatever eps it has).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import pytest
import torch

from segscope.explain import Concept, lrp


def load_zennit():
    """zennit's modules, or ``None``.

    ``import zennit`` imports zennit.torchvision, which needs torchvision; when only that
    fails, zennit's own modules (core, rules, composites, canonizers, attribution) are
    loaded without the package ``__init__`` — nothing is stubbed, the code is zennit's.
    """
    try:
        import zennit.attribution
        import zennit.canonizers
        import zennit.composites
        import zennit.rules

        return zennit
    except ImportError as exc:
        if "torchvision" not in str(exc):
            return None
    spec = importlib.util.find_spec("zennit")
    if spec is None or not spec.submodule_search_locations:
        return None
    saved = {k: v for k, v in sys.modules.items() if k == "zennit" or k.startswith("zennit.")}
    for k in saved:
        del sys.modules[k]
    pkg = types.ModuleType("zennit")
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules["zennit"] = pkg
    try:
        for sub in ("core", "types", "rules", "layer", "canonizers", "composites",
                    "attribution"):
            setattr(pkg, sub, importlib.import_module(f"zennit.{sub}"))
    except ImportError:
        return None
    return pkg


@pytest.fixture(scope="module")
def zennit():
    z = load_zennit()
    if z is None:
        pytest.skip("zennit is not importable")
    return z


def _zennit_lrp(z, model, image, initial, rule=None):
    rule = rule or z.rules.AlphaBeta(alpha=1.0, beta=0.0, stabilizer=1e-12)
    composite = z.composites.LayerMapComposite(
        layer_map=[(z.types.Convolution, rule)],
        canonizers=[z.canonizers.SequentialMergeBatchNorm()],
    )
    x = image[None].clone().requires_grad_(True)
    with z.attribution.Gradient(model=model, composite=composite) as attributor:
        _, relevance = attributor(x, initial[None])
    return relevance[0].detach()


def _rel_l2(a, b):
    return float((a - b).double().norm() / b.double().norm())



@pytest.mark.parametrize("biases", ["with biases", "zero biases"])
def test_alpha1beta0_matches_zennit(zennit, tiny_segnet, biases):
    model = tiny_segnet
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eps = 1e-12
    if biases == "zero biases":
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, torch.nn.Conv2d):
                    m.bias.zero_()
                elif isinstance(m, torch.nn.BatchNorm2d):
                    m.bias.zero_()
                    m.running_mean.zero_()
    image = torch.rand(3, 40, 56, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(40, 56)
    mask[10:30, 5:50] = 1
    for concept in (Concept.pixel("road", 20, 28), Concept.mask("markings", mask)):
        ours = lrp(model, image, concept)
        theirs = _zennit_lrp(zennit, model, image, ours.initial)
        assert float(theirs.abs().max()) > 0
        assert _rel_l2(ours.input, theirs) <= 1e-4
    # zennit's canonizer is undone after the attribution: the model is unchanged
    assert isinstance(model.conv1_1.bn, torch.nn.BatchNorm2d)


def test_epsilon_matches_zennit(zennit, tiny_segnet):
    """ε takes its denominators from the forward pass's own convolution outputs (zennit
    recomputes them in its backward hooks): the same relevance."""
    model = tiny_segnet
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eps = 1e-12
    image = torch.rand(3, 40, 56, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(40, 56)
    mask[12:32, 4:52] = 1
    for concept in (Concept.pixel("road", 20, 28), Concept.mask("markings", mask)):
        ours = lrp(model, image, concept, rule="epsilon:0.01")
        theirs = _zennit_lrp(zennit, model, image, ours.initial, zennit.rules.Epsilon(0.01))
        assert float(theirs.abs().max()) > 0
        assert _rel_l2(ours.input, theirs) <= 1e-4
