"""The gradient family of thesis §5, and the one forward/backward they all share.

The explained scalar of a :class:`~segscope.explain.Concept` is the sum over its output
weights w (K,H,W) of the scores y — or of the softmax probabilities for ``assign="prob"``
(eq 7.6: the sum over the mask of the class-c scores). :func:`layer_gradients` computes
it with one forward pass and the gradient of it with respect to any set of layers with one
backward pass; Grad-CAM (:mod:`.gradcam`), the receptive fields (:mod:`.receptive`) and
the methods here are built on it.

Methods (each returns an :class:`~segscope.explain.result.Attribution`):

- :func:`sensitivity` — R_i = (∂f/∂x_i)² (eq 5.2);
- :func:`gradient_x_input` — R_i = (x_i − x̃_i) · ∂f/∂x_i (eq 5.6, root x̃ default 0);
- :func:`deconvnet` and :func:`guided_backprop` — the gradient with the ReLU backward
  rules of fig 5.4 (:func:`relu_backward`);
- :func:`activation_maximization` — gradient ascent on the input (eq 5.1).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import SegscopeError
from ..models import fold_padding
from .checks import check_image, check_scores, model_device
from .concepts import Concept
from .result import Attribution

#: The ReLU backward rules of fig 5.4.
RELU_RULES = ("backprop", "deconvnet", "guided")

#: A layer: a name known to the model (``"data"`` is the input) or a module of it.
LayerRef = str | nn.Module


# -- the explained scalar ----------------------------------------------------------------
def class_names_of(model: nn.Module, num_classes: int) -> tuple[str, ...]:
    """The model's ``class_names``, or ``"0" … "K-1"`` for a model without them."""
    names = getattr(model, "class_names", None)
    if names is None:
        return tuple(str(i) for i in range(num_classes))
    if len(names) != num_classes:
        raise SegscopeError(
            f"the model names {len(names)} classes but outputs {num_classes} score maps"
        )
    return tuple(names)


def concept_target(
    scores: torch.Tensor, concept: Concept, class_names: Sequence[str]
) -> torch.Tensor:
    """The scalar a gradient method explains: Σ w·y, or Σ w·softmax(y) for ``prob``.

    ``scores`` is (K,H,W), before softmax. The weights w are
    ``concept.output_weights`` (1 on the selected neurons, or the user tensor); for
    ``assign="score"`` and ``"one"`` the target is the same sum of scores (eq 7.6) — the
    assignment changes LRP's initial relevance, not which function is differentiated.
    """
    if not isinstance(concept, Concept):
        raise SegscopeError(f"expected a Concept, got {type(concept).__name__}")
    weights = concept.output_weights(scores.detach(), class_names)
    if not bool((weights != 0).any()):
        raise SegscopeError("the concept selects no output neurons: nothing to explain")
    if concept.kind != "tensor" and concept.assign == "prob":
        return (weights * torch.softmax(scores, dim=0)).sum()
    return (weights * scores).sum()


# -- one forward, one backward -----------------------------------------------------------
@dataclass
class LayerGradients:
    """Activations and gradients of the explained scalar, in the padded frame.

    ``activations[name]`` and ``gradients[name]`` are (C,h,w) for every requested layer
    (``data``: the padded input, (3,Hp,Wp)); ``size`` is the unpadded image size (H,W)
    and ``padded`` the size the model ran at (Hp,Wp); ``target`` the explained scalar;
    ``scores`` the (K,H,W) output.
    """

    activations: dict[str, torch.Tensor]
    gradients: dict[str, torch.Tensor]
    target: float
    scores: torch.Tensor
    size: tuple[int, int]
    padded: tuple[int, int]
    class_names: tuple[str, ...]


def layer_name(model: nn.Module, layer: LayerRef) -> str:
    """The name a layer is reported under (a module's own attribute path)."""
    if isinstance(layer, str):
        return layer
    for name, module in model.named_modules():
        if module is layer:
            return name or "model"
    raise SegscopeError(f"the module {type(layer).__name__} is not part of this model")


def resolve_layer(model: nn.Module, layer: LayerRef) -> nn.Module | None:
    """The module whose output is ``layer``'s activation; ``None`` for ``"data"``.

    Uses ``model.layer(name)`` when the model has it (SegNet: the conv block's ReLU, the
    pooling module), else the module of that attribute path.
    """
    if isinstance(layer, nn.Module):
        layer_name(model, layer)  # checks that it belongs to the model
        return layer
    if not isinstance(layer, str):
        raise SegscopeError(f"a layer is a name or a module, got {layer!r}")
    if layer == "data":
        return None
    if hasattr(model, "layer"):
        return model.layer(layer)
    modules = dict(model.named_modules())
    if layer not in modules or not layer:
        known = ", ".join(n for n in modules if n)
        raise SegscopeError(f"unknown layer {layer!r} (modules: {known})")
    return modules[layer]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Explanations use the inference network (BN running statistics); restores the mode."""
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            yield
    finally:
        model.train(was_training)


Objective = Callable[[torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]


def run_gradients(
    model: nn.Module,
    image: torch.Tensor,
    objective: Objective,
    layers: Sequence[LayerRef],
    class_names: Sequence[str] | None = None,
) -> LayerGradients:
    """One forward pass and one backward pass of ``objective`` to ``layers``.

    ``objective(scores (K,H,W), activations)`` returns the scalar to differentiate.
    Only the gradients with respect to the requested activations are computed (none
    with respect to the weights), which keeps the backward pass near the cost of a
    forward pass.
    """
    image = check_image(image)
    h, w = image.shape[-2:]
    names = [layer_name(model, layer) for layer in layers]
    modules = [resolve_layer(model, layer) for layer in layers]
    captured: dict[int, torch.Tensor] = {}
    handles = []

    def hook(module: nn.Module, _inputs, output) -> None:
        # A max-pool with return_indices gives (values, indices); the values are the layer.
        captured[id(module)] = output[0] if isinstance(output, tuple) else output

    for module in modules:
        if module is not None:
            handles.append(module.register_forward_hook(hook))
    try:
        with eval_mode(model):
            x = image.detach().to(model_device(model), torch.float32)[None]
            # Pad here rather than inside forward, so that 'data' and every hooked layer
            # live in the same padded frame.
            if hasattr(model, "pad"):
                x = model.pad(x)
            x.requires_grad_(True)
            out = model(x)
            if out.dim() != 4 or out.shape[0] != 1 or out.shape[-2] < h or out.shape[-1] < w:
                raise SegscopeError(
                    f"the model must return scores (1,K,H,W) for a {h}x{w} image, got "
                    f"{tuple(out.shape)}"
                )
            scores = out[0, :, :h, :w]
            check_scores(scores.detach())
            if class_names is None:
                class_names = class_names_of(model, scores.shape[0])
            acts: dict[str, torch.Tensor] = {}
            for name, module in zip(names, modules, strict=True):
                if module is None:
                    acts[name] = x[0]
                elif id(module) not in captured:
                    raise SegscopeError(f"layer {name!r} did not run in the model's forward pass")
                else:
                    acts[name] = captured[id(module)][0]
            target = objective(scores, acts)
            tensors = [x if m is None else captured[id(m)] for m in modules]
            grads = torch.autograd.grad(target, tensors, allow_unused=True) if tensors else ()
    finally:
        for handle in handles:
            handle.remove()
    gradients = {
        name: (g[0] if g is not None else torch.zeros_like(acts[name])).detach()
        for name, g in zip(names, grads, strict=True)
    }
    return LayerGradients(
        activations={k: v.detach() for k, v in acts.items()},
        gradients=gradients,
        target=float(target.detach()),
        scores=scores.detach(),
        size=(int(h), int(w)),
        padded=(int(x.shape[-2]), int(x.shape[-1])),
        class_names=tuple(class_names),
    )


def layer_gradients(
    model: nn.Module,
    image: torch.Tensor,
    concept: Concept,
    layers: Sequence[LayerRef],
) -> LayerGradients:
    """Activations A and gradients ∂target/∂A of ``concept``'s target at ``layers``.

    One forward and one backward pass, whatever the number of layers.
    """
    names: list[str] = []

    def objective(scores: torch.Tensor, _acts: dict) -> torch.Tensor:
        names.extend(class_names_of(model, scores.shape[0]))
        return concept_target(scores, concept, names)

    return run_gradients(model, image, objective, layers)


# -- ReLU backward rules (fig 5.4) -------------------------------------------------------
def relu_backward(forward_input: torch.Tensor, grad_out: torch.Tensor, rule: str) -> torch.Tensor:
    """The signal a ReLU passes backwards, by the rules of fig 5.4.

    ``backprop`` passes ``grad_out`` where the forward input was > 0 (the gradient);
    ``deconvnet`` where the backward signal is > 0 (a ReLU on the backward signal);
    ``guided`` (guided backpropagation) where both are.
    """
    if rule == "backprop":
        return grad_out * (forward_input > 0).to(grad_out.dtype)
    if rule == "deconvnet":
        return grad_out.clamp(min=0)
    if rule == "guided":
        return grad_out.clamp(min=0) * (forward_input > 0).to(grad_out.dtype)
    raise SegscopeError(f"unknown ReLU rule {rule!r}; choose one of {', '.join(RELU_RULES)}")


class _RuleReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, rule: str) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.rule = rule
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (x,) = ctx.saved_tensors
        return relu_backward(x, grad_out, ctx.rule), None


@contextlib.contextmanager
def relu_rule(model: nn.Module, rule: str) -> Iterator[None]:
    """Make every ``nn.ReLU`` of ``model`` pass gradients back by ``rule`` meanwhile.

    The forward values are unchanged. Each ReLU's ``forward`` is replaced by an instance
    attribute and the attribute is removed on exit, also when an exception is raised.
    ReLUs applied functionally (``F.relu``) inside a module's forward are not affected.
    """
    if rule not in RELU_RULES:
        raise SegscopeError(f"unknown ReLU rule {rule!r}; choose one of {', '.join(RELU_RULES)}")
    patched: list[tuple[nn.Module, object]] = []
    try:
        for module in model.modules():
            if isinstance(module, nn.ReLU):
                patched.append((module, module.__dict__.get("forward")))
                module.forward = lambda x, _rule=rule: _RuleReLU.apply(x, _rule)
        yield
    finally:
        for module, previous in patched:
            if previous is None:
                del module.forward
            else:
                module.forward = previous


# -- the §5 methods ------------------------------------------------------------------------
def _input_gradient(
    model: nn.Module, image: torch.Tensor, concept: Concept, rule: str = "backprop"
) -> LayerGradients:
    if rule == "backprop":
        return layer_gradients(model, image, concept, ["data"])
    with relu_rule(model, rule):
        return layer_gradients(model, image, concept, ["data"])


def _cropped(g: LayerGradients) -> torch.Tensor:
    """The input gradient with respect to the image's own pixels: SegNet's padded pixels
    copy the last row/column, so their gradient adds to the pixel they copy."""
    h, w = g.size
    return fold_padding(g.gradients["data"], h, w)


def sensitivity(model: nn.Module, image: torch.Tensor, concept: Concept) -> Attribution:
    """Sensitivity analysis (eq 5.2): R_i = (∂f/∂x_i)², f the concept's target.

    ``.input`` is (3,H,W); ``.pixels`` sums the colour channels, so that
    ``pixels.sum()`` = ‖∇f‖² (eq 5.3).
    """
    g = _input_gradient(model, image, concept)
    r = _cropped(g) ** 2
    return Attribution(
        "sensitivity", r.sum(0), r, concept.describe(g.class_names),
        {"target": g.target, "gradient": _cropped(g)},
    )


def gradient_x_input(
    model: nn.Module,
    image: torch.Tensor,
    concept: Concept,
    root: torch.Tensor | float | None = None,
) -> Attribution:
    """Simple Taylor decomposition / gradient×input (eq 5.6): R_i = (x_i − x̃_i)·∂f/∂x_i.

    The gradient is taken at the image x (gradient×input); eq 5.6 takes it at the root x̃,
    which is the same for a piecewise-linear network when x̃ lies in x's linear region.
    ``root`` is a number or a (3,H,W) tensor, default 0. For a linear network
    f(x) = w·x + b, Σ R = f(x) − f(x̃).
    """
    image = check_image(image)
    if root is None:
        root_t = torch.zeros_like(image)
    elif torch.is_tensor(root):
        if tuple(root.shape) != tuple(image.shape):
            raise SegscopeError(
                f"the root point has shape {tuple(root.shape)}, the image {tuple(image.shape)}"
            )
        root_t = root
    else:
        try:
            root_t = torch.full_like(image, float(root))
        except (TypeError, ValueError):
            raise SegscopeError(
                f"a root point is a number or a (3,H,W) tensor, got {root!r}"
            ) from None
    if not bool(torch.isfinite(root_t).all()):
        raise SegscopeError("the root point must be finite (no NaN or infinity)")
    g = _input_gradient(model, image, concept)
    grad = _cropped(g)
    r = (image.to(grad) - root_t.to(grad)) * grad
    return Attribution(
        "gradxinput", r.sum(0), r, concept.describe(g.class_names),
        {"target": g.target, "gradient": grad, "root": root_t},
    )


def deconvnet(model: nn.Module, image: torch.Tensor, concept: Concept) -> Attribution:
    """DeconvNet (§5.1.2): the backward pass with a ReLU on the backward signal (fig 5.4).

    Max-pooling is reversed through the stored switches and convolutions through their
    transposed filters, which is what the gradient does; only the ReLUs differ.
    """
    return _rule_attribution("deconvnet", "deconvnet", model, image, concept)


def guided_backprop(model: nn.Module, image: torch.Tensor, concept: Concept) -> Attribution:
    """Guided backpropagation (§5.1.3): a ReLU passes the backward signal only where both
    the forward input and the backward signal are positive (fig 5.4)."""
    return _rule_attribution("guided", "guided", model, image, concept)


def _rule_attribution(
    method: str, rule: str, model: nn.Module, image: torch.Tensor, concept: Concept
) -> Attribution:
    g = _input_gradient(model, image, concept, rule)
    r = _cropped(g)
    return Attribution(method, r.sum(0), r, concept.describe(g.class_names),
                       {"target": g.target, "rule": rule})


def activation_maximization(
    model: nn.Module,
    target: Concept | tuple[LayerRef, int],
    size: tuple[int, int] = (64, 96),
    steps: int = 100,
    lr: float = 0.05,
    l2: float = 1e-4,
    seed: int = 0,
    progress: bool = False,
) -> Attribution:
    """Activation maximization (eq 5.1): an input that maximizes a concept or a channel.

    Gradient ascent on J(x) = f(x) − ``l2``·‖x‖² from a seeded uniform-noise image, kept
    in [0,1]. f is the concept's target (as for the other methods) or, for
    ``target=(layer, k)``, the mean activation of channel k of that layer. Each step moves
    the image by at most ``lr`` per pixel along the gradient (divided by its max) and is
    accepted only if J increases; otherwise the step is halved and retried (backtracking),
    and an accepted step lets the next one grow by 25 %. So J increases at every recorded
    step; the ascent stops early when no step size up to 2⁻²⁰·``lr`` improves J.

    Returns an :class:`Attribution` whose ``.input`` is the prototype image (3,H,W),
    ``.pixels`` its channel sum, ``.extras["history"]`` the objective J per accepted step
    (the start included, a float64 array).
    """
    if steps < 0:
        raise SegscopeError(f"steps must be non-negative, got {steps}")
    if not lr > 0:
        raise SegscopeError(f"lr must be positive, got {lr}")
    if l2 < 0:
        raise SegscopeError(f"l2 must be non-negative, got {l2}")
    h, w = (int(v) for v in size)
    if h < 1 or w < 1:
        raise SegscopeError(f"size must be positive, got {size}")

    if isinstance(target, Concept):
        concept = target
        layers: list[LayerRef] = []
        names: list[str] = []

        def objective(scores: torch.Tensor, _acts: dict) -> torch.Tensor:
            if not names:
                names.extend(class_names_of(model, scores.shape[0]))
            return concept_target(scores, concept, names)

        label = concept.describe(getattr(model, "class_names", None))
    else:
        try:
            layer, channel = target
            channel = int(channel)
        except (TypeError, ValueError):
            raise SegscopeError(
                f"activation maximization targets a Concept or (layer, channel), got {target!r}"
            ) from None
        lname = layer_name(model, layer)
        layers = [layer]

        def objective(_scores: torch.Tensor, acts: dict) -> torch.Tensor:
            a = acts[lname]
            if not 0 <= channel < a.shape[0]:
                raise SegscopeError(
                    f"channel {channel} out of range: layer {lname!r} has {a.shape[0]} channels"
                )
            return a[channel].mean()

        label = f"channel {channel} of {lname}"

    def evaluate(x: torch.Tensor) -> tuple[float, torch.Tensor]:
        g = run_gradients(model, x, lambda s, a: objective(s, a), [*layers, "data"])
        grad = _cropped(g) - 2 * l2 * x
        return g.target - l2 * float((x * x).sum()), grad

    gen = torch.Generator().manual_seed(int(seed))
    x = torch.rand(3, h, w, generator=gen).to(model_device(model))
    value, grad = evaluate(x)
    history = [value]
    step = float(lr)
    from tqdm import tqdm

    bar = tqdm(range(steps), desc="actmax", leave=False,
               disable=not (progress and sys.stderr.isatty()))
    for _ in bar:
        accepted = False
        for _try in range(21):
            scale = float(grad.abs().max())
            if scale == 0:
                break
            candidate = (x + step * grad / scale).clamp(0, 1)
            new_value, new_grad = evaluate(candidate)
            if new_value > value:
                x, value, grad, accepted = candidate, new_value, new_grad, True
                step *= 1.25
                break
            step *= 0.5
        if not accepted:
            break
        history.append(value)
        bar.set_postfix(objective=f"{value:.4g}")
    bar.close()
    return Attribution(
        "actmax", x.sum(0), x, label,
        {"history": np.array(history), "image": x, "lr": lr, "l2": l2, "seed": seed},
    )
