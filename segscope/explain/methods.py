"""One way in: every explanation method through :func:`attribute`, LRP included.

``attribute(method, model, image, concept, **options)`` returns an
:class:`~segscope.explain.result.Attribution` for every method, like captum's
``attribute(inputs, target, ...)``. The method names are defined once, in
:data:`METHODS` (the CLI's choices, this dispatch and the docs use it), and the options
each method uses in :data:`OPTIONS`.

The specialised entry points stay: :func:`~segscope.explain.lrp` (one
:class:`~segscope.explain.Explanation` per concept, layers, feature separation),
:func:`~segscope.explain.gradcam` (an (H,W) map), :mod:`~segscope.explain.gradients`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import SegscopeError
from .concepts import Concept
from .result import Attribution
from .rules import RuleLike

#: Every explanation method, by name.
METHODS = ("lrp", "gradcam", "gradcam-rf", "sensitivity", "gradxinput", "deconvnet", "guided",
           "actmax")

#: Options of :func:`attribute` and the methods that use them (the others ignore them;
#: ``segscope explain`` refuses them).
OPTIONS: dict[str, tuple[str, ...]] = {
    "rule": ("lrp",), "keep": ("lrp",),
    "layer": ("gradcam", "gradcam-rf", "actmax"),
    "channel": ("actmax",), "steps": ("actmax",), "seed": ("actmax",),
    "root": ("gradxinput",),
}

#: Steps of activation maximization when none are given.
ACTMAX_STEPS = 100


def attribute(
    method: str,
    model: nn.Module,
    image: torch.Tensor,
    concept: Concept | None,
    *,
    rule: RuleLike = "alpha1beta0",
    keep: Any = None,
    layer: str | None = None,
    root: torch.Tensor | float | None = None,
    channel: int | None = None,
    steps: int | None = None,
    seed: int = 0,
    quiet: bool = False,
) -> Attribution:
    """Explain ``concept`` on ``image`` (3,H,W) with ``method``.

    Parameters
    ----------
    method
        One of :data:`METHODS`: ``lrp`` (SPEC §3, eq 6.7), ``gradcam``, ``gradcam-rf``
        (the receptive-field variant, eq 7.15), ``sensitivity`` (eq 5.2), ``gradxinput``
        (eq 5.6), ``deconvnet``, ``guided`` (fig 5.4), ``actmax`` (eq 5.1).
    rule
        ``lrp``: the rule specification (see :func:`~segscope.explain.rules.parse_rules`:
        ``"alpha1beta0"``, ``"epsilon:0.01"``, ``"conv1_1=zbox,default=alpha1beta0"``,
        a dict, ...).
    keep
        ``lrp``: layers to keep, as for :func:`~segscope.explain.lrp`.
    layer
        Grad-CAM's layer (default :data:`segscope.explain.cam.DEFAULT_LAYER`,
        ``conv5_1_D``); for ``actmax`` with ``channel``, the layer of that channel.
    root
        Root point of ``gradxinput`` (a number or a (3,H,W) tensor; default 0).
    channel
        ``actmax``: maximize the mean activation of this channel of ``layer`` instead of
        the concept.
    steps
        ``actmax``: number of ascent steps (default 100).
    seed
        ``actmax``: seed of the starting noise image.
    quiet
        ``actmax``: no progress bar (there is none anyway when stderr is not a terminal).

    Returns
    -------
    Attribution
        ``pixels`` (H,W), ``input`` (3,H,W) or ``None``, ``concept`` (a description),
        ``method`` and method-specific ``extras`` (for ``lrp``: ``explanation``,
        ``output_total``, ``absorbed``, ``dropped``, ``rule``; for Grad-CAM: ``layer``,
        ``weights``, ``low_res``, ...).
    """
    if method not in METHODS:
        raise SegscopeError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if (method != "actmax" or channel is None) and not isinstance(concept, Concept):
        raise SegscopeError(f"method {method!r} needs a concept (a pixel, mask, ...)")
    if method == "lrp":
        from .relevance import lrp

        e = lrp(model, image, concept, rule=rule, keep=keep)
        return Attribution(
            "lrp", e.pixels, e.input, e.description,
            {"explanation": e, "output_total": e.output_total, "input_total": e.input_total,
             "absorbed": e.absorbed, "dropped": e.dropped, "rule": e.rule,
             "initial": e.initial},
        )
    if method in ("gradcam", "gradcam-rf"):
        from .cam import DEFAULT_LAYER, gradcam_maps

        name = DEFAULT_LAYER if layer is None else layer
        rf = method == "gradcam-rf"
        maps, g = gradcam_maps(model, image, concept, [name], receptive_field=rf)
        (lname, m), = maps.items()
        return Attribution(
            method, m.map, None, concept.describe(g.class_names),
            {"layer": lname, "weights": m.weights, "low_res": m.low_res,
             "receptive": m.receptive, "target": g.target, "receptive_field": rf},
        )

    from . import gradients

    if method == "sensitivity":
        return gradients.sensitivity(model, image, concept)
    if method == "gradxinput":
        return gradients.gradient_x_input(model, image, concept, root=root)
    if method == "deconvnet":
        return gradients.deconvnet(model, image, concept)
    if method == "guided":
        return gradients.guided_backprop(model, image, concept)
    # actmax
    gradients.check_image(image)
    if channel is not None:
        if layer is None:
            raise SegscopeError("actmax with a channel needs a layer (e.g. conv4_1)")
        target: Concept | tuple[str, int] = (layer, channel)
    else:
        target = concept
    return gradients.activation_maximization(
        model, target, size=tuple(image.shape[-2:]),
        steps=ACTMAX_STEPS if steps is None else int(steps), seed=seed,
        progress=not quiet,
    )
