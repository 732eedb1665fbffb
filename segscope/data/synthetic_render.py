"""Rendering one synthetic road scene from its :class:`~.synthetic.SceneParams`.

The camera is a pinhole at height ``cam_height`` looking down by ``pitch`` and rolled by
``roll``. All geometry is evaluated in the *un-rolled* camera frame (``uu`` centred
columns, ``vv`` rows), whose coordinates are broadcastable ``(1,W)`` / ``(H,1)`` arrays
when there is no roll; so, for the common case, everything that depends on the row only
(the ground distance ``z``, the dashes, the pixel size in metres) is computed once per
row. The road frame: ``x`` metres from the left edge of the carriageway, ``z`` metres
ahead. The road's centreline shifts sideways by ``curvature z^2/2 + yaw z`` and rises by
``slope z^2/2``.

Order: skyline and objects (barriers, poles, trees, vehicles) with a depth buffer; the
sky where nothing was drawn; then the ground (grass, road, markings) composed only where
no object covers it, from per-pixel material weights and one small matrix product.
Labels come from the same intervals of ``x`` and ``z`` that shade the picture.

Speed: the picture is kept channels first, so every per-channel pass runs over whole
contiguous planes; an element whose colour needs many operations per pixel computes it
only on the pixels that will show (:meth:`~.synthetic_canvas.Canvas.claim`); the road's
shade and paint are computed on the road's visible pixels only.
"""

from __future__ import annotations

import math

import numpy as np

from .classes import MARKINGS, ROAD
from .synthetic_canvas import (
    _CAR_COLOURS,
    F32,
    FACTOR_BITS,
    KERB,
    TILE,
    VEHICLE_SHAPES,
    Canvas,
    _draw_vehicle,
    _fence,
    _grain,
    _ground_shadow,
    fmod,
    pick,
    textures,
)


# --------------------------------------------------------------------------- scene
def render(p, height: int, width: int, rngs, trace: bool = False):
    """Picture (3,H,W) float32 in [0,1] (channels first) and ROAD3 label (H,W) uint8 of
    scene ``p``.

    ``rngs(name)`` gives the render-time random stream of factor ``name``. With
    ``trace`` a third array (H,W) uint32 says which factors acted on each pixel (bit i:
    ``FACTOR_BITS[i]``).
    """
    from . import synthetic_elements as el

    cv = Canvas(p, height, width)
    if trace:
        cv.trace = np.zeros((height, width), np.uint32)
    tex = textures()
    H, W = height, width

    # distance of the ground seen by each un-rolled row; a crest hides what lies beyond
    zs = np.geomspace(0.5, 800.0, 768)
    vz = cv.ground_row(zs)
    rising = np.nonzero(np.diff(vz) >= 0)[0]
    if rising.size:
        zs, vz = zs[: rising[0] + 1], vz[: rising[0] + 1]
    cv.zs, cv.vz = zs, vz
    cv.zmax, cv.v_end = float(zs[-1]), float(vz[-1])
    ground = cv.vv > F32(cv.v_end)
    rows_any = ground.any(axis=1)
    rows_all = ground.all(axis=1)
    g0 = int(np.argmax(rows_any)) if rows_any.any() else H
    s1 = H - int(np.argmax(~rows_all[::-1])) if (~rows_all).any() else 0
    cv.g0 = g0

    vvb = cv.vv[g0:]
    uub = cv.uu[g0:] if p.roll else cv.uu
    gm = ground[g0:]
    all_ground = bool(rows_all[g0:].all())
    zb = np.interp(vvb, vz[::-1], zs[::-1]).astype(F32)
    mpp = zb / F32(cv.f)  # metres per pixel at that distance
    inv = F32(cv.f) / zb  # pixels per metre
    x = uub * mpp + (F32(cv.xcam) - F32(0.5 * p.curvature) * zb * zb - F32(p.yaw) * zb)
    if not all_ground:
        x = np.where(gm, x, F32(-1e4))  # far outside every interval of the road
    zfull = np.broadcast_to(zb, (H - g0, W))
    cv.depth[g0:] = zfull if all_ground else np.where(gm, zfull, F32(np.inf))

    _skyline(cv.tagged("buildings", "trees", "palette"), p, tex, rngs("palette"))
    if p.layout == "urban":
        el.frontage(cv.tagged("buildings"), p, tex, rngs("buildings"))
    else:
        _barriers(cv.tagged("layout"), p)
    if p.pole_spacing > 0:
        if p.layout == "urban":
            el.street_furniture(cv, p, rngs("poles"))
        else:
            _poles(cv.tagged("poles"), p, rngs("poles"))
    _trees(cv, p, tex, rngs("trees"))
    if p.layout == "urban":
        el.parked_vehicles(cv.tagged("vehicles"), p, rngs("vehicles"))
    _vehicles(cv.tagged("vehicles"), p, rngs("vehicles"))
    el.people(cv.tagged("people"), p, rngs("people"))
    _sky(cv, p, tex, s1)
    label = np.zeros((H, W), np.uint8)
    if g0 < H:
        label[g0:] = _ground(cv, p, tex, g0, x, zb, mpp, inv, gm, all_ground, rngs)
    _atmosphere(cv, p, tex)
    el.camera_effects(cv, p)
    if p.distortion:
        image, label, tr = el.distort(cv.image, label, cv.trace, p.distortion)
        cv.image, cv.trace = image, tr
    if p.jpeg:
        cv.image = el.jpeg(cv.image, p.jpeg)
    if trace:
        return cv.image, label, cv.trace
    return cv.image, label


#: Width of a kerb (metres).


def _ground(cv: Canvas, p, tex, g0, x, zb, mpp, inv, gm, all_ground, rngs) -> np.ndarray:
    """Compose verge, kerbs, pavements, road and markings below the horizon; return the
    band's labels. Every class boundary is an interval of the road coordinate ``x`` (or
    of the distance ``z`` for crossings, stop lines and arrows).

    What only the road shows (its shade, the paint) is computed on the road's own
    pixels, those it covers at least in part and that no object hides; everywhere else
    its weight is zero."""
    H, W = cv.H, cv.W
    hb = H - g0
    ox, oy = p.texture_offset
    lw = p.lane_width
    lo, hi = -p.shoulder_left, cv.road_w + p.shoulder_right
    urban = p.layout == "urban"
    trace = cv.trace[g0:] if cv.trace is not None else None

    covered = cv.covered[g0:]
    visible = ~covered if all_ground else gm & ~covered

    # road surface: distance inside the paved interval, and its pixel coverage
    d_in = np.minimum(x - F32(lo), F32(hi) - x)
    surface = d_in >= 0
    cov = d_in * inv
    cov += F32(0.5)
    np.clip(cov, 0.0, 1.0, out=cov)
    # markings only where visible road surrounds them in their row
    vis = surface & visible
    enclosed = vis.copy()
    enclosed[:, 1:] &= vis[:, :-1]
    enclosed[:, :-1] &= vis[:, 1:]
    enclosed[:, 0] = False
    enclosed[:, -1] = False
    label = vis.astype(np.uint8)  # ROAD == 1
    assert ROAD == 1

    road = np.flatnonzero((cov > 0) & visible)  # flat band indices; enclosed lies inside
    road_rows = road // W

    def at(a):
        """``a`` (band rows, full width or one column) at the road's pixels."""
        a = np.ascontiguousarray(a)
        return np.take(a.reshape(-1), road if a.shape[-1] == W else road_rows, mode="wrap")

    xr, zr, mppr, invr = at(x), at(zb), at(mpp), at(inv)

    # lines on the boundaries between lanes (0..lanes); edge lines on the outer two
    idx = np.rint(xr * F32(1.0 / lw))
    np.clip(idx, 0, p.lanes, out=idx)
    dist = np.abs(xr - idx * F32(lw))
    line_dist = dist
    edge = (idx == 0) | (idx == p.lanes)
    lane_hw = p.line_width / 2
    doubled = np.zeros((), bool)
    if p.lane_style == "double":
        doubled = ~edge
    if p.edge_style == "double":
        doubled = doubled | edge
    if doubled.any():
        gap = np.where(edge, F32(p.edge_width * 1.6), F32(p.line_width * 1.4))
        dist = np.where(doubled, np.abs(dist - gap), dist)
    hw = np.where(edge, F32(p.edge_width / 2), F32(lane_hw))
    np.maximum(hw, F32(0.5) * mppr, out=hw)  # never thinner than one pixel
    paint = hw - dist
    paint *= invr
    paint += F32(0.5)
    np.clip(paint, 0.0, 1.0, out=paint)
    # dashes: per row when the distance is (no roll), else per road pixel
    s = (zb if zb.shape[-1] == 1 else zr) + F32(p.dash_phase)
    if p.lane_style == "dashed":
        period = p.dash_length + p.dash_gap
        on = fmod(s, period) < F32(p.dash_length)
        paint *= edge | (at(on) if zb.shape[-1] == 1 else on)
        dash_id = np.floor(s / F32(period)).astype(np.int32)
    else:
        dash_id = np.floor(s / F32(6.0)).astype(np.int32)
    if zb.shape[-1] == 1:
        dash_id = at(dash_id)
    if p.lane_style == "none":
        paint *= edge
    if p.edge_style == "none":
        paint *= ~edge
    if p.marking_gaps > 0:
        h = np.take(tex["hash"], (dash_id * 7 + idx.astype(np.int32) * 131 + ox) & 4095)
        paint *= h >= p.marking_gaps
    paint = _road_symbols(cv, p, xr, zr, paint)
    paint *= at(enclosed)

    label.reshape(-1)[road[paint >= 0.5]] = MARKINGS
    if trace is not None:
        trace.reshape(-1)[road[paint > 0]] |= np.uint32(1 << FACTOR_BITS.index("markings"))

    # shading: world-space texture (fades with distance) and pixel-space grain
    tz = (zb * F32(3.0)).astype(np.int32) & (TILE - 1)
    tx = (x * F32(3.0)).astype(np.int32) & (TILE - 1)
    t = _lookup(tex["ground"], tz, tx)
    fade = np.exp(-zb / F32(70.0)).astype(F32)
    t *= fade
    grain = _grain(tex, g0, cv.H, W, ox, oy)
    gs = F32(1.0) + F32(0.28) * t + F32(0.10) * grain
    grain_r = at(grain)
    rs = at(t) * F32(0.6)
    rs += grain_r * F32(0.7)
    rs *= F32(p.asphalt_texture)
    rs += F32(1.0)
    # wheel paths: darker, polished bands 0.9 m either side of each lane centre
    wheel = np.abs(line_dist - F32(lw / 2 - 0.9))
    wheel *= F32(-2.5)
    wheel += F32(1.0)
    np.maximum(wheel, F32(0.0), out=wheel)
    rs -= wheel * F32(0.07 * (1 - p.rain))
    if p.shoulder_shade != 1.0:
        shoulder = (xr < 0) | (xr > cv.road_w)
        rs *= F32(1.0) + F32(p.shoulder_shade - 1.0) * shoulder
    rs = _surface_variety(cv, p, tex, xr, zr, rs, rngs("surface"))
    ps = F32(1.0) + F32(0.05) * grain_r
    if cv.shadow is not None:
        sb = cv.shadow[g0:]
        gs *= sb
        sb = at(sb)
        rs *= sb
        ps *= sb
    if urban and p.shadow > 0 and p.facades + p.walls > 0:
        bs = _frontage_shadow(cv, p, x, zb)
        if bs is not None:
            gs *= bs
            if trace is not None:
                bits = (1 << FACTOR_BITS.index("buildings")) | (1 << FACTOR_BITS.index("shadows"))
                trace |= np.where(bs < 1, np.uint32(bits), 0).astype(np.uint32)
            bs = at(bs)
            rs *= bs
            ps *= bs
    alpha = paint
    if p.marking_fade > 0:
        wear = _lookup(tex["ground"], (at(tz) * 5) & (TILE - 1), (at(tx) * 7 + 99) & (TILE - 1))
        alpha = paint * (F32(1.0) - F32(p.marking_fade) * np.clip(F32(0.6) + F32(0.5) * wear,
                                                                  0, 1))

    # beside the road: a kerb and a pavement (urban), or a gravel strip (highway)
    out_d = -d_in
    n_mat = 6 if urban else 5
    weights = np.zeros((hb, W, n_mat + 1), F32)
    flat_w = weights.reshape(-1, n_mat + 1)
    one_minus = F32(1.0) - cov
    np.multiply(one_minus, gs, out=weights[..., 0])
    if urban:
        sw = np.where(x < lo, F32(p.sidewalk_left), F32(p.sidewalk_right))
        kerb = (out_d > 0) & (out_d < F32(KERB))
        walk = (out_d >= F32(KERB)) & (out_d < F32(KERB) + sw)
        kerbf = kerb.astype(F32)
        if trace is not None:
            trace |= np.where((kerb | walk) & visible, np.uint32(
                1 << FACTOR_BITS.index("sidewalks")), 0).astype(np.uint32)
        if p.sidewalk_style == "paved":
            walkf = walk.astype(F32)
            # the pavement's shade, computed on its own pixels only (zero weight elsewhere)
            wi = np.flatnonzero(walk)
            ri = wi // W

            def at_walk(a):
                return a.reshape(-1)[wi if a.shape[-1] == W else ri]

            mpp_w, zb_w, x_w = at_walk(mpp), at_walk(zb), at_walk(x)
            # slab joints, faded out where they would alias
            xo = at_walk(out_d) - F32(KERB)
            jw = np.maximum(F32(0.025), mpp_w)
            joints = (fmod(xo, p.slab) < jw) | (fmod(zb_w, p.slab) < jw)
            shade = at_walk(gs) * (F32(1.0) - F32(0.18) * joints
                                   * np.clip(F32(0.03) / mpp_w - F32(0.5), 0, 1))
            if p.driveways > 0:
                drive = np.take(tex["hash"], (np.floor(zb_w / F32(7.0)).astype(np.int32) * 37
                                              + (x_w < lo) * 911 + ox) & 4095) < p.driveways
                shade *= np.where(drive, F32(0.8), F32(1.0))
            shade *= at_walk(one_minus)
            flat_w[:, 1][wi] = shade
        else:
            walkf = F32(0.0)
        np.multiply(one_minus * kerbf, gs, out=weights[..., 5])
        weights[..., 0] *= F32(1.0) - kerbf - walkf
        # gutter: the road darkens in the last 0.25 m before the kerb
        rs *= F32(1.0) - F32(0.25) * np.clip(F32(1.0) - at(d_in) / F32(0.25), 0, 1) * at(
            surface)
        mat1 = p.sidewalk_rgb
    else:
        gravel = (d_in < 0) & (d_in > F32(-0.7))
        np.multiply(weights[..., 0], gravel, out=weights[..., 1])
        weights[..., 0] -= weights[..., 1]
        mat1 = (0.46, 0.43, 0.37)
    # the road's and the paint's weights: zero but on the road's pixels
    w_road = at(cov) * rs
    w_road *= F32(1.0) - alpha
    ap = alpha * ps
    # (scattered one column at a time: numpy's fast path for a 1-d target)
    flat_w[:, 3][road] = ap * ~edge
    flat_w[:, 4][road] = ap * edge
    colours = [p.grass_rgb, mat1, p.asphalt_rgb, p.marking_rgb, p.edge_rgb]
    if urban:
        colours.append(p.kerb_rgb)
    # a wet road mirrors the sky, more so far away
    colours.append(p.sky_horizon_rgb)
    if p.wet > 0:
        flat_w[:, -1][road] = w_road * (F32(0.45 * p.wet) * (F32(1.0) - F32(0.7) * at(fade)))
        w_road *= F32(1.0 - 0.35 * p.wet)
    flat_w[:, 2][road] = w_road
    band = (weights @ np.array(colours, F32)).transpose(2, 0, 1)
    if all_ground and not covered.any():
        cv.image[:, g0:] = band
    else:
        np.copyto(cv.image[:, g0:], band, where=visible)
    return label


def _road_symbols(cv: Canvas, p, x, zb, paint):
    """Zebra crossing, stop line and arrows: paint given by intervals of (x, z)."""
    lw, road_w = p.lane_width, cv.road_w
    extra = None
    if p.crossing > 0:
        zc = p.crossing
        m = (zb >= zc) & (zb < zc + 3.0) & (x > 0) & (x < road_w) & (fmod(x, 1.0) < 0.5)
        extra = m
    if p.stop_line > 0:
        x0 = p.ego_lane * lw
        m = (zb >= p.stop_line) & (zb < p.stop_line + 0.3) & (x > x0) & (x < x0 + lw)
        extra = m if extra is None else extra | m
    for k in range(p.arrows):
        a = 9.0 + 14.0 * k + (p.dash_phase % 5.0)
        xc = (p.ego_lane + 0.5) * lw
        rel = zb - F32(a)
        shaft = (rel >= 0) & (rel < 3.0) & (np.abs(x - F32(xc)) < 0.1)
        head = (rel >= 3.0) & (rel < 4.5) & (np.abs(x - F32(xc)) < F32(0.45) * (F32(4.5) - rel)
                                              / F32(1.5))
        m = shaft | head
        extra = m if extra is None else extra | m
    if extra is None:
        return paint
    return np.maximum(paint, extra.astype(F32))


def _surface_variety(cv: Canvas, p, tex, x, zb, rs, rng):
    """Patches of newer or older asphalt, cracks and manhole covers: ``rs`` (the road
    shade at road coordinates ``x``, ``zb``) shaded in place."""
    hsh = tex["hash"]
    ox, oy = p.texture_offset
    if p.patches > 0:
        cell = np.floor(np.divide(x, F32(2.5))).astype(np.int32)
        cell *= 53
        cell += np.floor(zb / F32(4.0)).astype(np.int32) * 7
        cell += ox
        pick = np.take(hsh, cell & 4095, mode="wrap")
        patch = pick < F32(0.25 * p.patches)
        cell *= 3
        cell += 1
        cell &= 4095
        tone = F32(0.82) + F32(0.36) * np.take(hsh, cell, mode="wrap")
        rs *= np.where(patch, tone, F32(1.0))
    if p.cracks > 0:
        c = _lookup(tex["ground"], (zb * F32(11.0)).astype(np.int32) & (TILE - 1),
                    (x * F32(11.0) + F32(oy)).astype(np.int32) & (TILE - 1))
        crack = (np.abs(c) < F32(0.05 * p.cracks)) & (zb < F32(25.0))
        rs *= np.where(crack, F32(0.65), F32(1.0))
    for _ in range(p.manholes):
        xm = float(rng.uniform(0.5, max(cv.road_w - 0.5, 0.6)))
        zm = float(rng.uniform(5.0, 40.0))
        r = float(rng.uniform(0.3, 0.45))
        # only the pixels that can hold the cover (with a margin for rounding)
        near = F32(r * 1.01 + 1e-3)
        sel = np.flatnonzero((np.abs(zb - F32(zm)) < near) & (np.abs(x - F32(xm)) < near))
        d2 = (x[sel] - F32(xm)) ** 2 + (zb[sel] - F32(zm)) ** 2
        rs[sel] *= np.where(d2 < F32(r * r), np.where(d2 > F32(0.7 * r * r), F32(0.55),
                                                      F32(0.8)), F32(1.0))
    return rs


def _lookup(tile: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``tile[rows, cols]`` for a (TILE,TILE) texture and in-range int32 indices, as one
    flat gather (several times faster than numpy's two-array fancy indexing). Here and
    wherever the indices are in range by construction, ``take(mode="wrap")`` spares
    numpy's per-index bounds check."""
    return np.take(tile.reshape(-1), (rows << TILE.bit_length() - 1) | cols, mode="wrap")


def _frontage_shadow(cv: Canvas, p, x, zb):
    """The shadow that the buildings and walls beside the road cast across it: the ground
    at ``x`` is shaded when it lies within ``height * |sun_dx|`` of the lit side's
    frontage."""
    fr = getattr(cv, "frontage", None)
    if not fr or p.sun_dx == 0:
        return None
    side = "right" if p.sun_dx < 0 else "left"
    starts, heights, x_f = fr[side]
    if not len(starts):
        return None
    # the edge of the shade per frontage segment, then per pixel (index i: segment i-1,
    # the first one also before its start)
    reach = np.asarray(heights, F32) * F32(abs(p.sun_dx))
    edge = F32(x_f) - reach if side == "right" else F32(x_f) + reach
    edge = np.concatenate([edge[:1], edge])
    edge = np.take(edge, np.searchsorted(starts, zb, side="right"))
    shade = (x > edge) if side == "right" else (x < edge)
    return np.where(shade, F32(1.0 - p.shadow), F32(1.0))


def _sky(cv: Canvas, p, tex, s1: int) -> None:
    """The sky, on the pixels of the rows above ``s1`` that nothing was drawn on (it is
    drawn last, behind everything; where objects cover most of it, only the pixels that
    show are computed)."""
    if s1 <= 0:
        return
    empty = cv.depth[:s1] == np.inf
    sky_px = np.flatnonzero(empty)
    if not sky_px.size:
        return
    dense = sky_px.size > 0.6 * empty.size
    if dense:  # every pixel of the rows (cheaper than gathering most of them)
        rows, cols = np.arange(s1)[:, None], np.arange(cv.W)[None, :]
        t = np.clip(cv.vv[:s1] / F32(max(cv.v_end, 1.0)), 0.0, 1.0) ** F32(1.8)
    else:
        rows, cols = np.divmod(sky_px, cv.W)
        vv = cv.vv[:s1]
        if vv.shape[1] == 1:  # one value per row
            t = np.clip(vv / F32(max(cv.v_end, 1.0)), 0.0, 1.0) ** F32(1.8)
            t = np.take(t.reshape(-1), rows)
        else:
            t = np.clip(np.take(vv.reshape(-1), sky_px) / F32(max(cv.v_end, 1.0)), 0.0,
                        1.0) ** F32(1.8)
    top = np.asarray(p.sky_top_rgb, F32)
    hor = np.asarray(p.sky_horizon_rgb, F32)
    ends = (slice(None),) + (None,) * t.ndim  # (3,) -> (3, 1[, 1])
    sky = top[ends] + (hor - top)[ends] * t
    if p.clouds > 0:
        ox, oy = p.texture_offset
        k = 300.0 / cv.H
        tile_rows = (np.arange(s1) * k * 1.6 + oy).astype(np.int64) & (TILE - 1)
        tile_cols = (np.arange(cv.W) * k * 0.6 + ox).astype(np.int64) & (TILE - 1)
        c = _lookup(tex["clouds"], np.take(tile_rows, rows), np.take(tile_cols, cols))
        amount = np.clip(c * F32(0.55) - F32(1.25) + F32(1.6 * p.clouds), 0.0, 1.0)
        amount *= F32(1.0) - F32(0.6) * t
        cloud_rgb = F32(0.97) - F32(0.12) * np.clip(c - 1.0, 0, 1)
        sky = sky + amount * (cloud_rgb - sky)
    if dense:
        np.copyto(cv.image[:, :s1], sky, where=empty)
        return
    for plane, values in zip(cv.image.reshape(3, -1), sky, strict=True):
        plane[sky_px] = values


def _skyline(cv: Canvas, p, tex, rng) -> None:
    """Far hills, then buildings and a band of treetops along the horizon (one layer)."""
    prof, hsh = tex["profile"], tex["hash"]
    sc = cv.scale
    off = int(rng.integers(0, 4096))
    margin = abs(math.sin(p.roll)) * cv.W
    # columns in 480-wide units; profiles are per un-rolled column
    cols = np.arange(-math.ceil(margin), cv.W + math.ceil(margin) + 1)
    ci = (cols * (480.0 / cv.W)).astype(np.int64)
    hills = (6.0 + 42.0 * prof[(ci // 3 + off) & 4095] ** 2) * sc
    block = (ci + off) // 41
    has = hsh[(block * 13 + 5) & 4095] < p.buildings
    bh = np.where(has, (8.0 + 40.0 * hsh[(block * 29 + 11) & 4095] ** 2) * sc, 0.0)
    cw = 9.0
    k = ((ci + off) / cw).astype(np.int64)
    frac = (ci + off) / cw - k
    crown = hsh[(k * 17 + 3) & 4095]
    forest = prof[(ci // 2 + off * 3 + 1000) & 4095]
    band_h = np.clip(forest - 0.25, 0, None) * 22.0 * sc
    bump = np.sqrt(np.clip(1.0 - (2.0 * frac - 1.0) ** 2, 0, 1))
    tree_h = np.where(band_h > 0, band_h + bump * (3.0 + 6.0 * crown) * sc, 0.0)
    tallest = float(max(hills.max(), bh.max(), tree_h.max()))
    win = cv.window(-cv.cx - margin, cv.W - cv.cx + margin, cv.v_end - tallest - 1,
                    cv.v_end + 1)
    if win is None:
        return
    rs, cs, uu, vv = win
    j = np.clip(np.rint(uu + F32(cv.cx - 0.5 - cols[0])).astype(np.int64), 0, len(cols) - 1)

    def at(a):
        return np.take(a.astype(F32), j)

    height = F32(cv.v_end + 0.5) - vv  # pixels above the horizon
    hor = np.asarray(p.sky_horizon_rgb, F32)
    hill_rgb = 0.55 * np.asarray(p.hills_rgb, F32) + 0.45 * hor
    tr = 0.8 * np.asarray(p.trees_rgb, F32) + 0.2 * hor
    shape = np.broadcast_shapes(height.shape, j.shape)
    rgb = np.empty((3,) + shape, F32)  # channels first
    rgb[:] = hill_rgb[:, None, None]
    in_hill = height < at(hills)
    mask = in_hill
    if p.buildings > 0:
        in_b = height < at(bh)
        if in_b.any():
            tint = F32(0.75) + F32(0.5) * at(hsh[(block * 3 + 1) & 4095])
            b_rgb = np.asarray(p.building_rgb, F32)[:, None, None] * tint
            win_px = max(2, int(round(3 * sc)))
            windows = (at(ci % 6) < 3) & ((vv.astype(np.int64) // win_px) % 2 == 0) & (
                height > 2 * sc)
            b_rgb = np.where(windows, b_rgb * F32(0.55), b_rgb)
            b_rgb = F32(0.8) * b_rgb + (F32(0.2) * hor)[:, None, None]
            np.copyto(rgb, b_rgb, where=in_b)
            mask = mask | in_b
    th = at(tree_h)
    in_t = height < th
    lum = F32(0.85) + F32(0.35) * at(bump) * (F32(1.0) - height / (th + 1))
    np.copyto(rgb, tr[:, None, None] * lum, where=in_t)
    mask = mask | in_t
    cv.put(rs, cs, mask, F32(2000.0), rgb, planar=True)


_STEEL = np.array([0.70, 0.72, 0.74], F32)
_CONCRETE = np.array([0.70, 0.69, 0.66], F32)


def _guard_rail(cv: Canvas, x_pos: float) -> None:
    for rs, cs, ok, zc, hgt in _fence(cv, x_pos, 0.8):
        post = fmod(zc, 4.0) < np.maximum(F32(0.15), F32(1.2) * zc / F32(cv.f))
        rail = (hgt > 0.45) & (hgt < 0.8)
        shade = np.where(rail, F32(0.8) + F32(0.25) * ((hgt > 0.6) & (hgt < 0.68)), F32(0.4))
        cv.put(rs, cs, ok & (rail | post), zc, _STEEL[:, None, None] * shade, planar=True)


def _barriers(cv: Canvas, p) -> None:
    _guard_rail(cv, cv.road_w + p.shoulder_right + 0.4)
    x_l = -p.shoulder_left - 0.4
    if p.median == "concrete":
        for rs, cs, ok, zc, hgt in _fence(cv, x_l, 0.85):
            shade = np.where(hgt < 0.15, F32(0.6), np.where(hgt > 0.75, F32(1.08), F32(0.88)))
            cv.put(rs, cs, ok, zc, _CONCRETE[:, None, None] * shade, planar=True)
    else:
        _guard_rail(cv, x_l)


def _poles(cv: Canvas, p, rng) -> None:
    """Lamp posts beside the right shoulder, with an arm over the road."""
    phase = float(rng.uniform(0, p.pole_spacing))
    x_pole = cv.road_w + p.shoulder_right + 1.5
    rgb = np.array([0.55, 0.56, 0.58], F32)
    for z in np.arange(phase + 6.0, min(cv.zmax, 250.0), p.pole_spacing)[::-1]:
        u = float(cv.column(x_pole, z))
        ua = float(cv.column(x_pole - 2.5, z))
        vg = float(cv.ground_row(z))
        vt = vg - cv.f * 10.0 / z
        half = max(0.5, cv.f * 0.12 / z)
        arm = max(0.8, cv.f * 0.15 / z)
        win = cv.window(min(u, ua) - half, u + half, vt - arm, vg)
        if win is None:
            continue
        rs, cs, uu, vv = win
        m = ((np.abs(uu - u) <= half) & (vv >= vt) & (vv <= vg)) | (
            (uu >= ua) & (uu <= u) & (np.abs(vv - vt) <= arm))
        cv.put(rs, cs, m, F32(z), rgb)


#: Trunk colours (channels first) of leafy and bare trees.
_BARK = np.array([0.22, 0.16, 0.10], F32)[:, None, None]
_BARK_BARE = np.array([0.22, 0.18, 0.14], F32)[:, None, None]


def _trees(cv: Canvas, p, tex, rng) -> None:
    n = p.trees
    if n <= 0:
        return
    side = rng.random(n) < 0.55
    if p.layout == "urban":
        # on the pavement near its outer edge, or just beyond it
        lateral = np.where(side, p.sidewalk_right, p.sidewalk_left) * rng.uniform(0.55, 1.3, n)
        lateral = lateral + KERB
        zt = rng.uniform(5.0, 120.0, n)
    else:
        lateral = 3.0 + 27.0 * rng.random(n) ** 2  # most trees near the verge
        zt = rng.uniform(6.0, 200.0, n)
    xs = np.where(side, cv.road_w + p.shoulder_right + lateral, -p.shoulder_left - lateral)
    radius = rng.uniform(1.8, 4.0, n)
    trunk_h = rng.uniform(1.2, 2.5, n)
    conifer = rng.random(n) < (0.3 if p.layout == "highway" else 0.1)
    bare = rng.random(n) < p.bare
    jitter = rng.uniform(-0.35, 0.35, (n, 3, 2))
    tr = np.asarray(p.trees_rgb, F32)
    branch = np.array([0.30, 0.27, 0.24], F32)
    ox, oy = p.texture_offset
    for i in np.argsort(-zt):
        z = float(zt[i])
        if z > cv.zmax:
            continue
        cv.tagged("trees")
        u = float(cv.column(xs[i], z))
        vg = float(cv.ground_row(z))
        r = max(1.0, cv.f * radius[i] / z)
        th = cv.f * trunk_h[i] / z
        vc = vg - th - r
        tall = 2.6 if conifer[i] else 1.2
        win = cv.window(u - 1.3 * r, u + 1.3 * r, vc - tall * r, vg)
        if win is None:
            continue
        rs, cs, uu, vv = win
        du, dv = (uu - F32(u)) / F32(r), (vv - F32(vc)) / F32(r)
        if conifer[i]:
            # a cone from the trunk top up to ``tall`` radii, slightly ragged
            hgt = (-dv + 1.0) / (tall + 1.0)
            crown = (hgt >= 0) & (hgt <= 1) & (
                np.abs(du) < 0.9 * (1 - hgt) * (1 + 0.15 * np.sin(dv * 9.0)))
        else:
            crown = np.zeros(np.broadcast_shapes(du.shape, dv.shape), bool)
            for jx, jy in jitter[i]:
                crown |= (du - jx) ** 2 + ((dv - jy) * 1.15) ** 2 < 0.55
        trunk = (np.abs(du) < max(0.5 / r, 0.08)) & (vv > vc) & (vv <= vg)
        g = _grain(tex, rs.start, rs.stop, cv.W, ox + 13 * i, oy + 7 * i)[:, cs]
        leafless = bare[i] and not conifer[i]
        if leafless:
            # a sparse tangle of twigs through which the background shows
            crown = crown & (g > F32(0.55))
        mask = crown | trunk
        # colours of the pixels that show only
        local, pixels = cv.claim(rs, cs, mask, F32(z))
        if local.size:
            shape = mask.shape
            g, crown = pick(g, local, shape), pick(crown, local, shape)
            if leafless:
                rgb = np.where(crown, branch[:, None] * (F32(0.8) + F32(0.2) * g),
                               _BARK_BARE[:, :, 0])
            else:
                lit = np.clip(F32(1.0) - F32(0.35) * (pick(du, local, shape)
                                                      + pick(dv, local, shape)),
                              F32(0.55), F32(1.4))
                rgb = np.where(crown, tr[:, None] * (lit * (F32(0.9) + F32(0.12) * g)),
                               _BARK[:, :, 0])
            cv.paint(pixels, np.full(local.size, z, F32), rgb)
        if p.shadow > 0:
            h = trunk_h[i] + radius[i] * (2.6 if conifer[i] else 1.0)
            cv.tagged("trees", "shadows")
            _ground_shadow(cv, xs[i] + p.sun_dx * h, z + p.sun_dz * h,
                           radius[i] * (0.8 if conifer[i] else 1.0),
                           p.shadow * (0.45 if bare[i] else 1.0))


#: width, height, length (metres) of a car, a van, a bus and a lorry


def _vehicles(cv: Canvas, p, rng) -> None:
    n = p.vehicles
    if n <= 0:
        return
    lanes = rng.integers(0, p.lanes, n)
    urban = p.layout == "urban"
    zv = rng.uniform(6.0 if urban else 8.0, 80.0 if urban else 110.0, n)
    kind = rng.choice(4, n, p=[0.72, 0.13, 0.07, 0.08] if urban else [0.7, 0.05, 0.0, 0.25])
    colours = _CAR_COLOURS[rng.integers(0, len(_CAR_COLOURS), n)]
    offset = rng.normal(0, 0.2, n)
    bus_rgb = np.array([[0.85, 0.85, 0.83], [0.75, 0.12, 0.10], [0.15, 0.30, 0.60]], F32)[
        rng.integers(0, 3, n)]
    # on a street, the lanes right of the middle carry the oncoming traffic
    ours = (p.lanes + 1) // 2 if urban and p.lanes > 1 else p.lanes
    taken: list[tuple[int, float]] = []
    for i in np.argsort(zv):  # nearest first: it claims its lane stretch
        z0 = float(zv[i])
        w, h, length = VEHICLE_SHAPES[kind[i]]
        if any(lane == lanes[i] and abs(z0 - zz) < 16 for lane, zz in taken):
            continue
        if (lanes[i] == p.ego_lane and z0 < 14) or z0 + length > cv.zmax:
            continue
        taken.append((int(lanes[i]), z0))
        xc = (lanes[i] + 0.5) * p.lane_width + offset[i]
        body = colours[i] if kind[i] < 2 else bus_rgb[i]
        _draw_vehicle(cv, xc, z0, w, h, length, body, kind[i] >= 2, front=lanes[i] >= ours)


def _atmosphere(cv: Canvas, p, tex) -> None:
    """Aerial perspective and fog, rain, exposure, blur and sensor noise (in place)."""
    img = cv.image
    hor = np.asarray(p.sky_horizon_rgb, F32)
    fog_rgb = hor * F32(1 - p.fog) + F32(0.75 * p.fog)
    vis = F32(1200.0 / (1.0 + 30.0 * p.fog**2))
    # haze grows with distance; the sky (infinite depth) only takes the fog
    full = 0.7 + 0.3 * p.fog  # haze at infinite distance (far objects stay faintly visible)
    # haze starts at ``near`` metres: the rows that see only nearer ground are skipped
    near = min(30.0, 0.1 * float(vis))
    e_near = math.exp(-near / float(vis))
    r_cut = cv.H
    row_near = float(cv.ground_row(near))
    if row_near > cv.v_end:
        r_cut = int(np.clip(math.ceil(row_near + abs(math.sin(p.roll)) * cv.W / 2) + 1, 0, cv.H))
    depth = cv.depth[:r_cut]
    haze = np.exp(-depth / vis)
    haze *= F32(-full / e_near)
    haze += F32(full)
    np.maximum(haze, F32(0.0), out=haze)
    haze[depth == np.inf] = F32(p.fog)
    fog_rgb = fog_rgb[:, None, None]
    top = img[:, :r_cut]
    top -= fog_rgb
    top *= np.subtract(F32(1.0), haze, out=haze)
    top += fog_rgb
    if p.blur > 0:
        k = F32(min(p.blur, 2.0) * 0.12)
        src = img * k  # each neighbour's share
        img *= F32(1.0) - F32(4.0) * k
        for a, b in ((np.s_[1:], np.s_[:-1]), (np.s_[:-1], np.s_[1:])):
            img[:, a] += src[:, b]
            img[:, :, a] += src[:, :, b]
        for edge in (np.s_[:1], np.s_[-1:]):  # mirror the missing neighbours at the borders
            img[:, edge] += src[:, edge]
            img[:, :, edge] += src[:, :, edge]
    # rain, contrast, brightness and tint: one affine map per channel
    tint = np.asarray(p.tint, F32)
    rain_gain, rain_bias = 1.0 - 0.35 * p.rain, 0.07 * p.rain
    gain = tint * F32(p.brightness * p.contrast * rain_gain)
    bias = tint * F32(p.brightness * (p.contrast * (rain_bias - 0.5) + 0.5))
    if not (np.all(gain == 1) and np.all(bias == 0)):
        img *= gain[:, None, None]
        img += bias[:, None, None]
    if p.noise > 0:
        ox, oy = p.texture_offset
        img += F32(p.noise) * _grain(tex, 0, cv.H, cv.W, ox + 311, oy + 97)
    np.clip(img, 0.0, 1.0, out=img)
    if p.gamma != 1.0:
        lut = (np.linspace(0.0, 1.0, 1024, dtype=np.float64) ** p.gamma).astype(F32)
        img *= F32(1023.0)
        img += F32(0.5)
        cv.image = np.take(lut, img.astype(np.int32), mode="wrap")  # indices in range
