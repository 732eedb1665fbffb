"""What ``segscope explore`` computes, without any web code: explanations on demand.

:class:`Explorer` answers the page's questions (a concept on an image with a method) with
numpy maps and JSON-ready numbers. It keeps the forward state of the recent images
(:func:`segscope.explain.forward_state`), so that a new concept on the same image costs
only the relevance sweep, and the recent results, so that the page can fetch their
pictures, arrays and numbers. Long work (separating a layer's features, §9.8) runs as a
:class:`Job` with progress and can be cancelled between batches of channels.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import analysis as A
from ..errors import SegscopeError
from ..explain import METHODS, Concept, attribute, forward_state, lrp, separate_features
from ..explain.cam import DEFAULT_LAYER
from ..explain.concepts import ASSIGNMENTS, PREDICTION_KINDS
from ..explain.rules import RULE_NAMES
from .catalog import Catalog, NotFound

#: Methods the page offers: all of :data:`segscope.explain.METHODS` but activation
#: maximization, which explains a class rather than a decision on this image.
PAGE_METHODS = tuple(m for m in METHODS if m != "actmax")
#: Concept kinds the page can send.
CONCEPT_KINDS = ("pixel", "mask", *PREDICTION_KINDS)
#: Points of the switch-off curve sent to the page (the full curve is in the .npy).
CURVE_POINTS = 201
#: Features listed as "top" of a feature-value profile.
TOP_FEATURES = 8
#: Channels separated per batch: the job's progress and cancel granularity.
SEPARATION_BATCH = 16


@dataclass(eq=False)
class Result:
    """One explanation as the page shows it."""

    id: str
    item: str
    method: str
    image: torch.Tensor  # (3,H,W)
    pixels: np.ndarray  # (H,W) float32
    selection: np.ndarray  # bool (H,W): the output pixels the concept selects
    numbers: dict[str, Any]
    layers: dict[str, np.ndarray] = field(default_factory=dict)  # layer-sum maps (h,w)
    fv: dict[str, np.ndarray] = field(default_factory=dict)  # feature values (C,)
    explanation: Any = None  # the LRP Explanation (without its layers), for separation
    rule: str = ""  # the LRP rule as the page gave it
    curve: A.SwitchOff | None = None


@dataclass(eq=False)
class Job:
    """Feature separation (§9.8) running in the background."""

    id: str
    result: str
    layer: str
    channels: list[int]
    done: int = 0
    status: str = "running"  # running, done, cancelled, failed
    error: str | None = None
    maps: np.ndarray | None = None  # (n,H,W) float32, filled batch by batch
    totals: np.ndarray | None = None
    cancel: threading.Event = field(default_factory=threading.Event)

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "result": self.result, "layer": self.layer,
                "channels": self.channels, "done": self.done, "total": len(self.channels),
                "status": self.status, "error": self.error,
                "totals": None if self.totals is None else
                [float(v) for v in self.totals[: self.done]],
                "limit": self.limit()}

    def limit(self) -> float | None:
        """One ±max|R| over the separated maps so far (eq 9.2: comparable panels)."""
        if self.maps is None or self.done == 0:
            return None
        return float(np.abs(self.maps[: self.done]).max()) or 1.0


class Explorer:
    """Explanations of ``model``'s decisions on the images of ``catalog``.

    Parameters
    ----------
    model
        A SegNet in eval mode, on its device.
    catalog
        The images the page may open.
    rule
        The LRP rule used when the page gives none.
    states, results, jobs
        How many forward states (images × rules), results and feature-separation jobs
        to keep in memory (the oldest go first).
    """

    def __init__(self, model: nn.Module, catalog: Catalog, rule: str = "alpha1beta0",
                 states: int = 3, results: int = 16, jobs: int = 4) -> None:
        self.model = model.eval()
        self.catalog = catalog
        self.rule = rule
        self.class_names = tuple(getattr(model, "class_names", None) or
                                 (str(k) for k in range(_num_classes(model))))
        self.layer_names = list(getattr(model, "layer_names", []))
        self._lock = threading.RLock()  # one computation on the model at a time
        self._books = threading.Lock()  # the result and job tables
        self._states: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._results: OrderedDict[str, Result] = OrderedDict()
        self._scores: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._latest: str | None = None  # the image opened last (see warm())
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._sizes = {"states": states, "results": results, "jobs": jobs}

    # -- model and images ----------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        conv = [n for n in self.layer_names if n.startswith("conv")]
        return {
            "classes": list(self.class_names), "layers": self.layer_names[1:],
            "conv_layers": conv, "methods": list(PAGE_METHODS), "rule": self.rule,
            "rules": list(RULE_NAMES), "assignments": list(ASSIGNMENTS),
            "concepts": list(CONCEPT_KINDS), "gradcam_layer": DEFAULT_LAYER,
            "fv_layer": "conv2_1" if "conv2_1" in self.layer_names else (conv or [""])[0],
            "device": str(_device(self.model)),
        }

    def check_rule(self, rule: str) -> None:
        """Fail now, with one line, on a rule that LRP does not know (a 32x32 trial)."""
        with self._lock:
            forward_state(self.model, torch.zeros(3, 32, 32), rule)

    def state(self, item_id: str, rule: str | None = None):
        """The cached forward state of an image under ``rule``."""
        rule = (rule or self.rule).strip()
        key = (item_id, rule)
        with self._lock:
            if key in self._states:
                self._states.move_to_end(key)
                return self._states[key]
            image, _ = self.catalog.load(item_id)
            st = forward_state(self.model, image, rule)
            self._states[key] = st
            _trim(self._states, self._sizes["states"])
            return st

    def scores(self, item_id: str) -> torch.Tensor:
        """(K,H,W) output scores of an image: the model's own forward pass, cached.

        The prediction, the IoU and the concepts of the gradient methods use these; LRP
        resolves its concepts on the scores of its forward state.
        """
        with self._books:  # a cached answer does not wait for a running computation
            if item_id in self._scores:
                self._scores.move_to_end(item_id)
                return self._scores[item_id]
        with self._lock:
            image, _ = self.catalog.load(item_id)
            device = _device(self.model)
            with torch.no_grad():
                scores = self.model(image[None].to(device))[0].float()
            with self._books:
                self._scores[item_id] = scores
                _trim(self._scores, self._sizes["results"])
            return scores

    def warm(self, item_id: str) -> None:
        """Compute the image's forward state for the default rule in the background, so
        that the first click on a freshly opened image costs only the sweep too."""
        self._latest = item_id

        def run() -> None:
            # The click that needs the state reports any error; an image the user has
            # already left is skipped, so that browsing quickly builds no backlog.
            with self._lock, contextlib.suppress(Exception):
                if self._latest == item_id:
                    self.state(item_id)
        threading.Thread(target=run, daemon=True, name=f"warm-{item_id}").start()

    def view(self, item_id: str) -> dict[str, Any]:
        """Size, label presence and per-class IoU of an image."""
        from ..metrics import ConfusionMatrix

        item = self.catalog.get(item_id)
        image, label = self.catalog.load(item_id)
        scores = self.scores(item_id)
        pred = scores.argmax(0).cpu()
        out = {**item.describe(), "height": int(image.shape[1]), "width": int(image.shape[2]),
               "has_label": label is not None, "iou": None, "miou": None,
               "pixel_accuracy": None,
               "predicted_share": {n: float((pred == k).float().mean())
                                   for k, n in enumerate(self.class_names)}}
        if label is not None:
            names = self.class_names
            if item.extra.get("road_surface"):
                # Labels without markings (CamVid 11-class): scored on the road surface,
                # as segscope evaluate does, under that name.
                from ..data.real import ROAD_SURFACE, merge_road_surface

                pred, label = merge_road_surface(pred, label)
                names = list(ROAD_SURFACE)
                out["scored_on"] = "road surface (these labels have no markings)"
            m = ConfusionMatrix(len(names), names).update(pred, label)
            metrics = m.metrics()
            out.update(iou=metrics["iou"], miou=metrics["miou"],
                       pixel_accuracy=metrics["global_accuracy"])
        return out

    def picture(self, item_id: str, what: str) -> np.ndarray:
        """(H,W,3) uint8: the ``image``, its ``label`` or the ``prediction`` over it."""
        from ..viz.contact import as_rgb8, label_overlay

        image, label = self.catalog.load(item_id)
        if what == "image":
            return as_rgb8(image)
        if what == "label":
            if label is None:
                raise NotFound(f"image {item_id!r} has no label")
            return label_overlay(image, label)
        if what == "prediction":
            return label_overlay(image, self.scores(item_id).argmax(0).cpu())
        raise NotFound(f"unknown picture {what!r} (image, label or prediction)")

    # -- explanations --------------------------------------------------------------------
    def explain(self, request: Mapping[str, Any]) -> Result:
        """Explain a concept on an image; ``request`` is the page's JSON (see docs/explore.md).

        Keys: ``image`` (id), ``concept`` ({kind, class, y, x, mask, assign}), ``method``,
        ``rule`` (LRP), ``layer`` (Grad-CAM), ``fv_layer`` (the profile's layer).
        """
        if not isinstance(request, Mapping):
            raise SegscopeError("the request must be a JSON object")
        item_id = str(request.get("image", ""))
        self.catalog.get(item_id)
        method = str(request.get("method") or "lrp").lower()
        if method not in PAGE_METHODS:
            raise SegscopeError(f"unknown method {method!r}; choose one of "
                                f"{', '.join(PAGE_METHODS)}")
        rule = str(request.get("rule") or self.rule)
        with self._lock:
            image, label = self.catalog.load(item_id)
            if method == "lrp":
                st = self.state(item_id, rule)
                concept, numbers = self._concept(request.get("concept"), st.scores, label)
                return self._lrp(item_id, image, concept, numbers, st, rule,
                                 request.get("fv_layer"))
            scores = self.scores(item_id)
            concept, numbers = self._concept(request.get("concept"), scores, label)
            layer = request.get("layer") or None
            if layer is not None and method.startswith("gradcam"):
                self._check_layer(str(layer))
            a = attribute(method, self.model, image, concept,
                          layer=layer if method.startswith("gradcam") else None)
            pixels = a.pixels.detach().float().cpu().numpy()
            numbers.update(method=method, description=a.concept)
            if method.startswith("gradcam"):
                numbers.update(layer=a.extras.get("layer"),
                               receptive_field=bool(a.extras.get("receptive_field")))
            return self._store(Result(_new_id(), item_id, method, image, pixels,
                                      numbers.pop("_selection"), numbers))

    def _lrp(self, item_id, image, concept, numbers, st, rule, fv_layer) -> Result:
        # The click keeps the per-channel totals of every layer (fv profiles, computed
        # inside the sweep); the layer grid, which needs every layer's map, is a second
        # sweep that the page asks for once the heatmap is shown (layers()).
        e = lrp(self.model, image, concept, rule=rule, keep="totals", state=st)
        order = [n for n in reversed(self.layer_names) if n in e.totals] or list(e.totals)
        fv = {n: e.feature_values(n).numpy() for n in order}
        names = [n for n in reversed(self.layer_names) if n in e.absorbed]
        absorbed = {n: e.absorbed[n] for n in names}
        absorbed.update({n: v for n, v in e.absorbed.items() if n not in absorbed})
        total = e.output_total
        numbers.update(
            method="lrp", rule=e.rule, description=e.description,
            output_total=total, input_total=e.input_total, dropped=e.dropped,
            share_reaching_pixels=A.share_reaching_input(e.input_total, total),
            absorbed=absorbed, absorbed_total=float(sum(absorbed.values())),
            absorbed_share=A.share_reaching_input(float(sum(absorbed.values())), total),
        )
        pixels = e.pixels.detach().float().cpu().numpy()
        r = Result(_new_id(), item_id, "lrp", image, pixels, numbers.pop("_selection"),
                   numbers, fv=fv, explanation=e, rule=rule)
        self.profile(r, fv_layer)
        return self._store(r)

    def layers(self, result_id: str) -> Result:
        """Every layer's layer-sum map (eq 9.1, §9.4) of an LRP result: one more sweep
        with all layers kept, once per result."""
        r = self.result(result_id)
        if r.method != "lrp" or r.explanation is None:
            raise SegscopeError("the layer-wise view needs an LRP explanation (method lrp)")
        with self._lock:
            if r.layers:
                return r
            e = lrp(self.model, r.image, r.explanation.concept, rule=r.rule, keep="all",
                    state=r.explanation.state)
            order = [n for n in reversed(self.layer_names) if n in e.layers] or list(e.layers)
            sums = {n: e.layer_sum(n).numpy() for n in order}
            r.numbers["layers"] = [{"name": n, "total": float(sums[n].sum(dtype=np.float64)),
                                    "shape": list(sums[n].shape)} for n in order]
            r.layers = sums
        return r

    def _fv_layer(self, layer: Any) -> str:
        layer = str(layer or self.info()["fv_layer"])
        if layer == "data" or (self.layer_names and layer not in self.layer_names):
            raise SegscopeError(f"unknown layer {layer!r} for feature values; choose one of "
                                f"{self.layer_names[1]}, ..., {self.layer_names[-1]}")
        return layer

    def profile(self, r: Result, layer: str | None) -> dict[str, Any]:
        """Set the result's feature-value profile (§9.6) to ``layer``; returns it."""
        if r.method != "lrp":
            raise SegscopeError("feature values need an LRP explanation (method lrp)")
        layer = self._fv_layer(layer)
        if layer not in r.fv:
            raise SegscopeError(f"layer {layer!r} has no feature values in this result")
        fv = r.fv[layer]
        top = A.rank_features(fv)[:TOP_FEATURES]
        r.numbers["fv"] = {"layer": layer, "values": [float(v) for v in fv],
                           "top": [{"channel": int(k), "fv": float(fv[k])} for k in top]}
        return r.numbers["fv"]

    def _store(self, r: Result) -> Result:
        r.curve = A.switch_off_curve(r.pixels)
        n = r.curve.pixel_share.size
        idx = np.unique(np.round(np.linspace(0, n - 1, min(n, CURVE_POINTS))).astype(int))
        r.numbers.update(
            id=r.id, image=r.item, height=int(r.pixels.shape[0]), width=int(r.pixels.shape[1]),
            limit=float(np.abs(r.pixels).max()) or 1.0,
            min=float(r.pixels.min()), max=float(r.pixels.max()),
            negative_share=A.negative_share(r.pixels),
            switch_off={
                "pixel_share": [float(v) for v in r.curve.pixel_share[idx]],
                "relevance_share": [float(v) for v in r.curve.relevance_share[idx]],
                "pixels_holding": {str(s): r.curve.pixels_holding(s)
                                   for s in A.REPORTED_SHARES},
            },
        )
        with self._books:
            self._results[r.id] = r
            _trim(self._results, self._sizes["results"])
        return r

    def result(self, result_id: str) -> Result:
        r = self._results.get(str(result_id))
        if r is None:
            raise NotFound(f"unknown or expired result {str(result_id)[:40]!r} (explain again)")
        return r

    # -- concepts --------------------------------------------------------------------------
    def _concept(self, spec: Any, scores: torch.Tensor,
                 label: torch.Tensor | None) -> tuple[Concept, dict[str, Any]]:
        """The page's concept ({kind, class, y, x, mask, assign}) as a :class:`Concept`."""
        if not isinstance(spec, Mapping):
            raise SegscopeError("the request needs a concept: {kind, class, ...}")
        kind = str(spec.get("kind", ""))
        if kind not in CONCEPT_KINDS:
            raise SegscopeError(f"unknown concept kind {kind!r}; choose one of "
                                f"{', '.join(CONCEPT_KINDS)}")
        k, h, w = scores.shape
        assign = str(spec.get("assign") or ("one" if kind == "pixel" else "score"))
        cls = spec.get("class", "predicted")
        pred = scores.argmax(0)
        if kind == "pixel":
            y, x = _int(spec.get("y"), "y"), _int(spec.get("x"), "x")
            if not (0 <= y < h and 0 <= x < w):
                raise SegscopeError(f"pixel ({y}, {x}) is outside the {h}x{w} image "
                                    f"(y in 0..{h - 1}, x in 0..{w - 1})")
            c = int(pred[y, x]) if cls in (None, "", "predicted") else self._class(cls)
            concept = Concept.pixel(c, y, x, assign=assign)
            extra = {"y": y, "x": x}
        elif kind == "mask":
            mask = _decode_mask(spec.get("mask"), h, w)
            if cls in (None, "", "predicted"):
                c = int(torch.bincount(pred.cpu()[torch.from_numpy(mask)], minlength=k).argmax())
            else:
                c = self._class(cls)
            concept = Concept.mask(c, mask, assign=assign)
            extra = {"pixels": int(mask.sum())}
        else:
            if label is None:
                raise SegscopeError(f"{kind.upper()} needs a label, and this image has none: "
                                    "click a pixel or brush a mask instead")
            if cls in (None, "", "predicted"):
                raise SegscopeError(f"choose the class whose {kind.upper()} to explain")
            c = self._class(cls)
            concept = Concept.from_prediction(c, kind, label, assign=assign)
            extra = {}
        selection = concept.selection(scores, self.class_names).cpu().numpy()
        numbers = {"concept": {"kind": kind, "class": self.class_names[c], "class_index": c,
                               "assign": assign, "selected": int(selection.sum()), **extra},
                   "_selection": selection}
        return concept, numbers

    def _class(self, cls: Any) -> int:
        from ..explain.concepts import resolve_class

        if isinstance(cls, bool) or not isinstance(cls, int | str):
            raise SegscopeError(f"a class is a name or an index, got {cls!r}")
        return resolve_class(cls, self.class_names)

    def _check_layer(self, layer: str) -> None:
        if self.layer_names and layer not in self.layer_names:
            raise SegscopeError(f"unknown layer {layer!r}; SegNet's layers are "
                                f"{self.layer_names[1]}, ..., {self.layer_names[-1]}")

    # -- §9.10 two images ------------------------------------------------------------------
    def compare(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """The same concept on two images: both LRP results and their fv profiles'
        divergence per layer (cosine distance and Jensen-Shannon, §9.10)."""
        if not isinstance(request, Mapping):
            raise SegscopeError("the request must be a JSON object")
        one = {k: v for k, v in request.items() if k not in ("a", "b")}

        def side(name: str, req: dict[str, Any]) -> Result:
            try:
                return self.explain(req)
            except SegscopeError as exc:  # say which of the two images it was
                raise SegscopeError(f"image {name} ({req['image']}): {exc}") from None

        a = side("a", {**one, "image": str(request.get("a", "")), "method": "lrp"})
        # The same class on both images, also when the page said "predicted".
        concept = {**(one.get("concept") or {}), "class": a.numbers["concept"]["class"]}
        b = side("b", {**one, "concept": concept, "image": str(request.get("b", "")),
                       "method": "lrp"})
        order = [n for n in a.fv if n in b.fv]
        div = A.profile_divergence(a.fv, b.fv, order)
        return {"a": a.numbers, "b": b.numbers,
                "divergence": [{"layer": n, **div[n]} for n in order]}

    # -- §9.8 feature separation ----------------------------------------------------------
    def separate(self, result_id: str, layer: str | None = None, top: Any = 16) -> Job:
        """Start separating the ``top`` features (by fv; ``"all"`` for every one) of
        ``layer`` of an LRP result; returns the running :class:`Job`."""
        r = self.result(result_id)
        if r.method != "lrp" or r.explanation is None:
            raise SegscopeError("feature separation needs an LRP explanation (method lrp)")
        layer = self._fv_layer(layer or r.numbers.get("fv", {}).get("layer"))
        if layer not in r.fv:
            raise SegscopeError(f"layer {layer!r} has no feature values in this result")
        order = A.rank_features(r.fv[layer])
        if top == "all":
            n = order.size
        else:
            n = _int(top, "top")
            if n < 1:
                raise SegscopeError(f"top must be at least 1, got {n}")
        job = Job(_new_id(), r.id, layer, [int(k) for k in order[: min(n, order.size)]])
        h, w = r.pixels.shape
        job.maps = np.zeros((len(job.channels), h, w), np.float32)
        job.totals = np.zeros(len(job.channels), np.float32)
        with self._books:
            self._jobs[job.id] = job
            _trim(self._jobs, self._sizes["jobs"])
        threading.Thread(target=self._run_job, args=(job, r), daemon=True,
                         name=f"separate-{job.id}").start()
        return job

    def _run_job(self, job: Job, r: Result) -> None:
        try:
            with self._lock:  # the layer's relevance once, not once per batch
                e = lrp(self.model, r.image, r.explanation.concept, rule=r.rule,
                        keep=[job.layer], state=r.explanation.state)
            for lo in range(0, len(job.channels), SEPARATION_BATCH):
                if job.cancel.is_set():
                    job.status = "cancelled"
                    return
                chans = job.channels[lo: lo + SEPARATION_BATCH]
                with self._lock:  # a click between two batches is answered at once
                    fm = separate_features(self.model, r.image, e, job.layer, channels=chans)
                job.maps[lo: lo + len(chans)] = fm.pixels.float().numpy()
                job.totals[lo: lo + len(chans)] = fm.totals.float().numpy()
                job.done = lo + len(chans)
            job.status = "done"
        except SegscopeError as exc:
            job.status, job.error = "failed", str(exc)
        except Exception as exc:  # noqa: BLE001 - a job must end with a state, not vanish
            job.status, job.error = "failed", f"internal error: {type(exc).__name__}: {exc}"

    def job(self, job_id: str) -> Job:
        j = self._jobs.get(str(job_id))
        if j is None:
            raise NotFound(f"unknown job {str(job_id)[:40]!r}")
        return j


# -- helpers -------------------------------------------------------------------------------
def _new_id() -> str:
    return uuid.uuid4().hex[:12]


def _trim(cache: OrderedDict, size: int) -> None:
    while len(cache) > size:
        cache.popitem(last=False)


def _num_classes(model: nn.Module) -> int:
    return int(getattr(model, "num_classes", 3))


def _device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise SegscopeError(f"{what} must be an integer, got {value!r}")
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise SegscopeError(f"{what} must be an integer, got {value!r}") from None
    if not np.isfinite(f) or f != int(f):
        raise SegscopeError(f"{what} must be an integer, got {value!r}")
    return int(f)


def _decode_mask(runs: Any, h: int, w: int) -> np.ndarray:
    """A brushed mask sent as runs [[start, length], ...] over the row-major H*W pixels."""
    if isinstance(runs, list) and not runs:
        raise SegscopeError("the mask is empty: brush over the image first")
    if not isinstance(runs, list):
        raise SegscopeError("a mask is a list of [start, length] runs")
    try:
        arr = np.asarray(runs, dtype=np.float64)
    except (TypeError, ValueError):
        raise SegscopeError("a mask is a list of [start, length] runs") from None
    if arr.ndim != 2 or arr.shape[1] != 2 or not np.isfinite(arr).all() \
            or (arr != np.round(arr)).any():
        raise SegscopeError("a mask is a list of [start, length] integer runs")
    # checked as floats: a start of 1e30 does not fit an int64 (the cast warns, then wraps)
    if (arr[:, 0] < 0).any() or (arr[:, 1] < 1).any() or (arr.sum(1) > h * w).any():
        raise SegscopeError(f"a mask run lies outside the {h}x{w} image")
    starts, lengths = arr[:, 0].astype(np.int64), arr[:, 1].astype(np.int64)
    flat = np.zeros(h * w + 1, np.int32)
    np.add.at(flat, starts, 1)
    np.add.at(flat, starts + lengths, -1)
    return (np.cumsum(flat[:-1]) > 0).reshape(h, w)
