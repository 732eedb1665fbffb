"""A label-free failure score: how far an image's fingerprint sits from synthetic ones.

:func:`fit_reference` summarises the fingerprints of a synthetic reference set (real
labels are never used); :func:`fit_failure_model` fits, on labelled synthetic scenes of
other looks (the calibration sets), how the model's IoU falls with those distances and
signals; :func:`score_images` then gives each image the failure score and every
baseline, all oriented by :data:`DIRECTION`:

- ``failure_score`` — ``1 -`` the IoU the :class:`FailureModel` predicts from the
  relevance fingerprint's distance and the signals below; without a calibration set, the
  distance :data:`FAILURE_SCORE` itself (docs/diagnose.md says why and how well each
  works);
- ``fv_js`` — the probe: Jensen-Shannon divergence of each layer's fv profile from the
  mean synthetic profile, averaged over the layers;
- ``fv_js_z`` — the same per-layer divergences, each standardised by how far synthetic
  images themselves sit from the mean (leave-one-out), then averaged: layers where
  synthetic images already vary a lot count less;
- ``fv_knn`` — mean over layers of the divergence to the k nearest synthetic profiles;
- ``fv_z`` — per-channel z-scores of the feature values against the synthetic channels'
  mean and spread, root-mean-square per layer, averaged over layers;
- ``fv_conflict`` — per layer, the share of the relevance that runs against the layer's
  net total (channels whose total has the other sign: evidence against the concept the
  network had to overrule), the median over layers; it needs no reference, and is 0 for
  a rule without negative relevance (α1β0);
- baselines: ``max_softmax`` (mean max-softmax), ``entropy`` (mean entropy), ``atc``
  (Garg et al. 2022: share of pixels whose confidence exceeds a threshold fitted so that
  on the synthetic set that share equals the pixel accuracy), ``act_js`` (the probe on
  mean-activation profiles instead of relevance), ``colour_js`` (divergence of the colour
  histogram from the mean synthetic one) and ``share_shift`` (L1 distance of the predicted
  class shares from the synthetic mean).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .errors import SegscopeError
from .fingerprint import COLOUR_BINS, CONFIDENCE_BINS, Fingerprints, Layout

#: +1: a higher value means failure is more likely; -1: a lower value does.
DIRECTION: dict[str, int] = {
    "failure_score": 1, "fv_js": 1, "fv_js_z": 1, "fv_knn": 1, "fv_z": 1, "fv_conflict": 1,
    "max_softmax": -1, "entropy": 1, "atc": -1, "act_js": 1, "colour_js": 1, "share_shift": 1,
}
#: The measure reported as ``failure_score`` when no calibration set is given (with one,
#: it is ``1 -`` the IoU a :class:`FailureModel` predicts).
FAILURE_SCORE = "fv_knn"
#: Ridge penalties of :class:`FailureModel`; their predictions are averaged, so no penalty
#: has to be chosen (on real data or otherwise).
RIDGE_PENALTIES = (1.0, 10.0, 100.0, 1000.0)
#: Fewest calibration images with a known IoU a :class:`FailureModel` is fitted on.
MIN_CALIBRATION = 8
#: What a :class:`FailureModel` reads: the relevance fingerprint's distance to the
#: synthetic reference and the label-free signals of the baselines. (One distance, not one
#: per layer: with 37 per-layer distances the fit followed whichever layers happened to
#: vary in the calibration sample, and two samples of the same presets ranked CamVid val
#: with Spearman -0.45 and +0.65; docs/diagnose.md.)
MODEL_FEATURES = ("fv_knn", "entropy", "max_softmax", "atc", "act_js", "colour_js",
                  "share_shift")
#: Neighbours of ``fv_knn``.
KNN = 5
#: Floor of a channel's spread in ``fv_z`` (fv are O(1): a channel that never varies on
#: synthetic images must not make every tiny real deviation infinite).
FV_SD_FLOOR = 0.05
#: Layers the relevance scores leave out: the class-score layer's fv only say which class
#: the concept is (constant for a one-class concept).
SKIP_LAYERS = ("conv1_1_D",)


# -- Jensen-Shannon on many profiles at once ---------------------------------------------------
def _distributions(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows -> (positive part / row sum, row is all zero)."""
    p = np.clip(np.asarray(x, np.float64), 0, None)
    s = p.sum(-1, keepdims=True)
    zero = s[..., 0] == 0
    return np.divide(p, s, out=np.zeros_like(p), where=s > 0), zero


def js_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence (base 2) of every row of ``a`` (N,C) with every row of
    ``b`` (M,C) -> (N,M), with the conventions of :func:`segscope.analysis.jensen_shannon`
    (two all-zero rows are 0 apart, an all-zero and a non-zero one 1 apart)."""
    p, pz = _distributions(np.atleast_2d(a))
    q, qz = _distributions(np.atleast_2d(b))
    out = np.empty((p.shape[0], q.shape[0]))
    step = max(1, int(2e7 // max(1, q.size)))
    for lo in range(0, p.shape[0], step):
        pp = p[lo:lo + step, None, :]
        m = 0.5 * (pp + q[None])
        with np.errstate(divide="ignore", invalid="ignore"):
            kp = np.where(pp > 0, pp * np.log2(pp / m), 0.0).sum(-1)
            kq = np.where(q[None] > 0, q[None] * np.log2(q[None] / m), 0.0).sum(-1)
        out[lo:lo + step] = np.clip(0.5 * (kp + kq), 0.0, 1.0)
    both, one = pz[:, None] & qz[None], pz[:, None] ^ qz[None]
    out[both], out[one] = 0.0, 1.0
    return out


def layer_conflict(fv: np.ndarray, slices: Mapping[str, slice]) -> np.ndarray:
    """(N, L): per layer, the share of each row's relevance mass in channels whose feature
    value is negative (fv sum to the channel count, so those oppose the layer's net
    total): ``sum(max(-fv, 0)) / sum(|fv|)``, 0 for an all-zero row."""
    out = []
    for s in slices.values():
        x = np.asarray(fv[:, s], np.float64)
        mass = np.abs(x).sum(1)
        out.append(np.divide(np.clip(-x, 0, None).sum(1), mass, out=np.zeros(len(x)),
                             where=mass > 0))
    return np.stack(out, axis=1)


def _layer_js(x: np.ndarray, ref: np.ndarray, slices: Mapping[str, slice]) -> np.ndarray:
    """(N, L): per layer, JS of each row of ``x`` from the single profile ``ref``."""
    return np.stack([js_rows(x[:, s], ref[None, s])[:, 0] for s in slices.values()], axis=1)


# -- ATC -----------------------------------------------------------------------------------
def atc_threshold(confidence: np.ndarray, accuracy: float) -> float:
    """ATC's threshold t: the share of pixels with confidence > t equals ``accuracy``.

    ``confidence`` is a histogram (bins over [0, 1], pooled over the synthetic images) of
    per-pixel max-softmax. Returns the bin edge where the share of pixels above it is
    closest to ``accuracy`` (the highest of equally close edges).
    """
    hist = np.asarray(confidence, np.float64).ravel()
    total = hist.sum()
    if total <= 0:
        raise SegscopeError("no pixels to fit the ATC threshold on")
    edges = np.linspace(0.0, 1.0, hist.size + 1)
    # above[j]: share of pixels in bins j.. (confidence > edges[j])
    above = np.concatenate([np.cumsum(hist[::-1])[::-1], [0.0]]) / total
    gap = np.abs(above - accuracy)
    j = int(np.nonzero(gap <= gap.min() + 1e-12)[0][-1])  # ties: the highest such edge
    return float(edges[j])


def atc_scores(confidence: np.ndarray, threshold: float) -> np.ndarray:
    """(N,) share of each image's pixels with confidence above ``threshold``."""
    hist = np.atleast_2d(np.asarray(confidence, np.float64))
    j = int(round(threshold * hist.shape[1]))
    total = hist.sum(1)
    return np.divide(hist[:, j:].sum(1), total, out=np.zeros(hist.shape[0]), where=total > 0)


# -- the reference -------------------------------------------------------------------------
@dataclass
class Reference:
    """What the scores need from the synthetic set (fitted by :func:`fit_reference`)."""

    layout: Layout
    fv: np.ndarray  # (Ns, D) synthetic profiles with a non-empty concept
    fv_mean: np.ndarray
    fv_sd: np.ndarray
    js_mean: np.ndarray  # (L,) leave-one-out divergence of synthetic images from the mean
    js_sd: np.ndarray
    act_mean: np.ndarray
    colour_mean: np.ndarray
    share_mean: np.ndarray
    atc_threshold: float
    accuracy: float

    @property
    def slices(self) -> dict[str, slice]:
        return {n: s for n, s in self.layout.slices().items() if n not in SKIP_LAYERS}


def fit_reference(synthetic: Fingerprints) -> Reference:
    """Fit the reference on synthetic fingerprints (their labels only give ATC's accuracy).

    Raises
    ------
    SegscopeError
        With fewer than 2 images, or fewer than 2 where the concept is non-empty.
    """
    n = len(synthetic)
    if n < 2:
        raise SegscopeError(f"the synthetic reference needs at least 2 images, got {n}")
    keep = synthetic.scalar("empty") == 0
    if keep.sum() < 2:
        raise SegscopeError(
            f"the model predicts the concept class in only {int(keep.sum())} of the {n} "
            "synthetic reference images; at least 2 are needed (a trained model? another "
            "--class?)")
    layout = synthetic.layout
    fv = synthetic.fv[keep]
    m = fv.shape[0]
    mean = fv.mean(0)
    sd = np.maximum(fv.std(0, ddof=1), FV_SD_FLOOR)
    loo = (m * mean[None] - fv) / (m - 1)  # each image's mean of the others
    slices = {k: s for k, s in layout.slices().items() if k not in SKIP_LAYERS}
    js = np.stack([np.array([js_rows(fv[i, s], loo[i, s])[0, 0] for i in range(m)])
                   for s in slices.values()], axis=1)
    js_sd = np.maximum(js.std(0, ddof=1), 1e-6)
    valid = synthetic.scalar("valid").sum()
    accuracy = float(synthetic.scalar("correct").sum() / valid) if valid > 0 else float("nan")
    threshold = atc_threshold(synthetic.confidence.sum(0), accuracy) \
        if np.isfinite(accuracy) else 0.5
    return Reference(
        layout=layout, fv=fv, fv_mean=mean, fv_sd=sd, js_mean=js.mean(0), js_sd=js_sd,
        act_mean=synthetic.act.mean(0), colour_mean=synthetic.colour.mean(0),
        share_mean=synthetic.shares.mean(0), atc_threshold=threshold, accuracy=accuracy)


def score_images(ref: Reference, fps: Fingerprints, knn: int = KNN,
                 model: FailureModel | None = None) -> dict[str, np.ndarray]:
    """Every score of every image: {name: (N,)}, oriented as :data:`DIRECTION` says.

    ``failure_score`` is ``1 -`` the IoU ``model`` predicts, or without a model the
    measure :data:`FAILURE_SCORE`."""
    slices = ref.slices
    js = _layer_js(fps.fv, ref.fv_mean, slices)
    out: dict[str, np.ndarray] = {"fv_js": js.mean(1)}
    out["fv_js_z"] = ((js - ref.js_mean) / ref.js_sd).mean(1)
    knn_layers = layer_knn(ref, fps, knn)
    out["fv_knn"] = knn_layers.mean(1)
    z = (fps.fv - ref.fv_mean) / ref.fv_sd
    out["fv_z"] = np.stack([np.sqrt((z[:, s] ** 2).mean(1)) for s in slices.values()], 1).mean(1)
    out["fv_conflict"] = np.median(layer_conflict(fps.fv, slices), axis=1)
    out["max_softmax"] = fps.scalar("max_softmax").copy()
    out["entropy"] = fps.scalar("entropy").copy()
    out["atc"] = atc_scores(fps.confidence, ref.atc_threshold)
    act_slices = ref.layout.slices(act=True)
    out["act_js"] = _layer_js(fps.act, ref.act_mean, act_slices).mean(1)
    colour = fps.colour.reshape(len(fps), 3, COLOUR_BINS)
    ref_colour = ref.colour_mean.reshape(3, COLOUR_BINS)
    out["colour_js"] = np.stack([js_rows(colour[:, c], ref_colour[c][None])[:, 0]
                                 for c in range(3)], 1).mean(1)
    out["share_shift"] = np.abs(fps.shares - ref.share_mean).sum(1)
    if model is None:
        out["failure_score"] = out[FAILURE_SCORE].copy()
    else:
        out["failure_score"] = 1.0 - model.predict(_features(out))
    return out


def layer_knn(ref: Reference, fps: Fingerprints, knn: int = KNN) -> np.ndarray:
    """(N, L): per layer of :attr:`Reference.slices`, the mean JS divergence of each
    image's fv profile from its ``knn`` nearest synthetic profiles."""
    k = max(1, min(knn, ref.fv.shape[0]))
    return np.stack([np.sort(js_rows(fps.fv[:, s], ref.fv[:, s]), axis=1)[:, :k].mean(1)
                     for s in ref.slices.values()], axis=1)


def _features(scores: Mapping[str, np.ndarray]) -> np.ndarray:
    return np.stack([scores[k] for k in MODEL_FEATURES], 1)


# -- the calibrated failure model ----------------------------------------------------------
@dataclass
class FailureModel:
    """Predicts an image's IoU from its fingerprint, fitted on labelled synthetic images.

    The features are the scores of :data:`MODEL_FEATURES` (the relevance fingerprint's
    distance ``fv_knn`` and the baselines' signals), each standardised over the
    calibration images. One ridge regression per penalty of :data:`RIDGE_PENALTIES`;
    the prediction is their mean. Real labels are never used.

    Attributes
    ----------
    features
        The feature names (:data:`MODEL_FEATURES`).
    mean, scale
        Standardisation of each feature.
    weights
        (len(RIDGE_PENALTIES), F) standardised weights, one row per penalty.
    intercept
        The calibration images' mean IoU.
    n_images
        Calibration images it was fitted on.
    held_out
        {set name: Spearman of the prediction with IoU on that set when the model is
        fitted without it} — a label-free hint of how well it carries to a new domain.
    held_out_skipped
        {set name: why that set has no held-out check} (too few images in it or in the
        rest, or IoUs that do not vary), so that no set drops out of the table unsaid.
    """

    features: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    intercept: float
    n_images: int
    held_out: dict[str, float]
    held_out_skipped: dict[str, str] = field(default_factory=dict)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(N,) predicted IoU of feature rows ``x`` (N, F)."""
        z = (np.asarray(x, np.float64) - self.mean) / self.scale
        return self.intercept + (z @ self.weights.T).mean(1)

    def importance(self) -> dict[str, float]:
        """{feature: its share of the summed |standardised weight|}."""
        w = np.abs(self.weights).mean(0)
        total = float(w.sum()) or 1.0
        return {f: float(w[i]) / total for i, f in enumerate(self.features)}

    def as_dict(self) -> dict:
        return {"features": list(self.features), "penalties": list(RIDGE_PENALTIES),
                "weights": self.weights.mean(0).tolist(), "intercept": self.intercept,
                "n_images": self.n_images, "held_out": self.held_out,
                "held_out_skipped": self.held_out_skipped, "importance": self.importance()}


def _ridge(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(len(RIDGE_PENALTIES), F) ridge weights of centred ``y`` on standardised ``z``."""
    gram, rhs = z.T @ z, z.T @ (y - y.mean())
    eye = np.eye(z.shape[1])
    return np.stack([np.linalg.solve(gram + lam * eye, rhs) for lam in RIDGE_PENALTIES])


def fit_failure_model(ref: Reference, calibration: Fingerprints,
                      groups: np.ndarray | None = None,
                      group_names: Sequence[str] | None = None) -> FailureModel:
    """Fit a :class:`FailureModel` on labelled synthetic ``calibration`` fingerprints.

    ``groups`` (N,) gives each image's calibration set (e.g. its preset); with two or more
    sets, :attr:`FailureModel.held_out` says how well a model fitted without each set ranks
    that set's images.

    Raises
    ------
    SegscopeError
        With fewer than :data:`MIN_CALIBRATION` images with a known IoU, or when their IoU
        does not vary.
    """
    from .stats import spearman

    x = _features(score_images(ref, calibration))
    y = calibration.scalar("iou")
    ok = np.isfinite(y) & np.isfinite(x).all(1) & (calibration.scalar("empty") == 0)
    if ok.sum() < MIN_CALIBRATION:
        raise SegscopeError(
            f"the calibration set has {int(ok.sum())} labelled image(s) where the concept is "
            f"predicted; the failure model needs at least {MIN_CALIBRATION}")
    x, y = x[ok], y[ok]
    if np.ptp(y) <= 1e-9:
        raise SegscopeError("every calibration image has the same IoU: nothing to learn a "
                            "failure score from (more varied synthetic data?)")
    held_out: dict[str, float] = {}
    skipped: dict[str, str] = {}
    if groups is not None:
        g_all = np.asarray(groups)
        g = g_all[ok]
        for v in np.unique(g_all):
            name = group_names[int(v)] if group_names is not None else str(v)
            test = g == v
            reason = _why_no_held_out(test, y)
            if reason:
                skipped[name] = reason
                continue
            without = _fit(x[~test], y[~test], held_out={})
            held_out[name] = float(spearman(without.predict(x[test]), y[test]))
    return _fit(x, y, held_out, skipped)


def _why_no_held_out(test: np.ndarray, y: np.ndarray) -> str | None:
    """Why the set ``test`` (a mask over the usable calibration images with IoUs ``y``)
    cannot be held out, or None when it can."""
    if test.sum() < 3:
        return (f"{int(test.sum())} usable image(s) in it (labelled, concept predicted); "
                "a held-out check needs 3")
    if (~test).sum() < MIN_CALIBRATION:
        return (f"{int((~test).sum())} usable image(s) in the other sets; a model fitted "
                f"without it needs {MIN_CALIBRATION}")
    if np.ptp(y[~test]) <= 1e-9:
        return "the other sets' images all have the same IoU"
    return None


def _fit(x: np.ndarray, y: np.ndarray, held_out: dict[str, float],
         held_out_skipped: dict[str, str] | None = None) -> FailureModel:
    """The :class:`FailureModel` of feature rows ``x`` and IoUs ``y``."""
    mean, scale = x.mean(0), x.std(0)
    scale = np.where(scale > 1e-12, scale, 1.0)
    return FailureModel(MODEL_FEATURES, mean, scale, _ridge((x - mean) / scale, y),
                        float(y.mean()), len(y), held_out, dict(held_out_skipped or {}))


def layer_divergence(ref: Reference, fps: Fingerprints) -> np.ndarray:
    """(N, L): each image's per-layer JS divergence from the mean synthetic profile, for
    the layers of :attr:`Reference.slices`."""
    return _layer_js(fps.fv, ref.fv_mean, ref.slices)


__all__ = ["DIRECTION", "FAILURE_SCORE", "FailureModel", "Reference", "fit_failure_model",
           "fit_reference", "layer_knn", "score_images",
           "atc_threshold", "atc_scores", "js_rows", "layer_divergence", "CONFIDENCE_BINS"]
