"""Street elements of the ``urban`` layout and the camera's own effects.

Each element is drawn from explicit geometry in the road frame (``x`` metres from the
left edge of the carriageway, ``z`` metres ahead) into the depth-tested canvas of
:mod:`.synthetic_render`, so whatever an element hides is ``background`` in the label
exactly where it is drawn. Buildings, walls and fences stand along the outer edge of
the pavements; lamp posts, sign posts and traffic lights at the kerb; parked cars along
the kerb; pedestrians on the pavements and cyclists near the kerb.
"""

from __future__ import annotations

import functools
import io

import numpy as np

from .classes import MARKINGS, ROAD
from .synthetic_canvas import F32, KERB, VEHICLE_SHAPES, Canvas, _draw_vehicle, _fence, _grain, fmod

_BRICK = np.array([[0.56, 0.33, 0.25], [0.70, 0.62, 0.50], [0.60, 0.58, 0.55],
                   [0.45, 0.40, 0.36]], F32)


def _sides(cv: Canvas, p):
    """(name, x of the pavement's outer edge, outward sign) for both sides."""
    lo, hi = -p.shoulder_left, cv.road_w + p.shoulder_right
    return (("left", lo - KERB - p.sidewalk_left, -1.0),
            ("right", hi + KERB + p.sidewalk_right, 1.0))


# --------------------------------------------------------------------------- frontage
def frontage(cv: Canvas, p, tex, rng) -> None:
    """Buildings, walls, fences and hedges along the back of each pavement.

    The frontage is a sequence of segments along ``z`` (a building, a wall, a fence, a
    hedge or a gap); its heights are kept on the canvas for the shadows it casts.
    """
    cv.frontage = {}
    own = np.asarray(p.building_rgb, F32)
    for side, x_f, _ in _sides(cv, p):
        starts, heights, kinds, bases, tones, noises, bays = [], [], [], [], [], [], []
        z = 0.0
        while z < min(cv.zmax, 400.0):
            starts.append(z)
            r = rng.random()
            if r < p.facades:
                kinds.append(0)
                heights.append(p.facade_height * rng.uniform(0.6, 1.4))
                length = rng.uniform(8.0, 30.0)
            elif rng.random() < p.walls:
                kinds.append(int(rng.integers(1, 4)))  # wall, fence, hedge
                heights.append(rng.uniform(0.8, 2.2))
                length = rng.uniform(6.0, 25.0)
            else:
                kinds.append(-1)
                heights.append(0.0)
                length = rng.uniform(4.0, 14.0)
            bases.append(own if rng.random() < 0.5 else _BRICK[rng.integers(0, len(_BRICK))])
            tones.append(rng.uniform(0.8, 1.2))
            noises.append(rng.normal(0, 0.03, 3))
            bays.append(rng.uniform(2.2, 4.0))
            z += length
        starts_a = np.asarray(starts, F32)
        cv.frontage[side] = (starts_a, np.asarray(heights, F32), x_f)
        if max(heights) <= 0:
            continue
        # per-segment tables indexed by ``searchsorted(starts, z)``, i.e. segment + 1 (the
        # first segment repeated in front: it also holds before its start)
        def table(values, dtype):
            a = np.asarray(values, dtype)
            return np.concatenate([a[:1], a])

        heights_a, kinds_a = table(heights, F32), table(kinds, np.int64)
        bays_a, starts_e = table(bays, F32), table(starts, F32)
        # one colour table: per segment, base / glass / cornice / wall top / wood / hedge
        # (the tone in float32 as ``base * python_float`` computes it, the noise in float64)
        base_c = np.clip((np.asarray(bases, F32) * np.asarray(tones, F32)[:, None])
                         .astype(np.float64) + np.asarray(noises), 0, 1)
        base_c = table(base_c, F32)
        glass = np.asarray(p.sky_horizon_rgb, F32) * F32(0.35) + F32(0.06)
        lut = np.empty((len(base_c), _MATERIALS, 3), F32)
        lut[:, 0] = base_c
        lut[:, 1] = glass
        lut[:, 2] = base_c * F32(0.75)
        lut[:, 3] = np.minimum(base_c * F32(1.15), 1.0)
        lut[:, 4] = (0.31, 0.22, 0.15)
        lut[:, 5] = (0.36, 0.26, 0.17)
        lut[:, 6] = (0.16, 0.28, 0.11)
        lut = np.ascontiguousarray(lut.reshape(-1, 3).T)  # (3, segments * materials)
        for rs, cs, ok, zc, hgt in _fence(cv, x_f, float(heights_a.max())):
            k = np.searchsorted(starts_a, zc, side="right")  # per column (pixel with roll)
            m = ok & (hgt <= np.take(heights_a, k))
            # shade only the pixels that will show: gather them, compute, scatter
            local, pixels = cv.claim(rs, cs, m, zc)
            if not local.size:
                continue
            if zc.shape[0] == 1:  # one value per column
                at_col = local % (cs.stop - cs.start)
                zc, k = zc.reshape(-1)[at_col], k.reshape(-1)[at_col]
            else:
                zc, k = zc.reshape(-1)[local], k.reshape(-1)[local]
            hgt = hgt.reshape(-1)[local]
            seg_h = np.take(heights_a, k)
            kind = np.take(kinds_a, k)
            present = set(kinds_a[k.min():k.max() + 1].tolist())
            # material index: segment * _MATERIALS + base 0 / glass 1 / cornice 2 /
            # wall top 3 / wood 4, 5 / hedge 6; each term only for the kinds in view
            mat = k * _MATERIALS
            building = kind == 0
            if 0 in present:
                local_z = zc - np.take(starts_e, k)
                bk = np.take(bays_a, k)
                bay = fmod(local_z, bk) / bk
                storey = fmod(hgt, 3.0)
                mat += building & (((bay > 0.3) & (bay < 0.8) & (storey > 0.9)
                                    & (storey < 2.3) & (hgt > 3.0) & (hgt < seg_h - 0.8))
                                   | ((hgt > 0.4) & (hgt < 2.7) & (fmod(local_z, 6.0) > 0.6)))
            if 0 in present or 1 in present:
                top = hgt > seg_h - np.where(building, F32(0.35), F32(0.12))
                mat += top * (building * 2 + (kind == 1) * 3)
            if 2 in present:
                mat += (kind == 2) * (4 + (fmod(zc, 0.15) < 0.1))
            if 3 in present:
                mat += (kind == 3) * 6
            g = np.ascontiguousarray(
                _grain(tex, rs.start, rs.stop, cv.W, 31 * len(starts), 17)[:, cs]).reshape(-1)
            rgb = np.take(lut, mat, axis=1)
            rgb *= F32(0.94) + F32(0.06) * np.take(g, local)
            cv.paint(pixels, zc, rgb)


#: Colours per frontage segment in the lookup table of :func:`frontage`.
_MATERIALS = 7


# --------------------------------------------------------------------------- furniture
_SIGN_RGB = np.array([[0.80, 0.10, 0.10], [0.10, 0.25, 0.65], [0.92, 0.92, 0.90],
                      [0.35, 0.20, 0.12]], F32)


def street_furniture(cv: Canvas, p, rng) -> None:
    """Lamp posts, sign posts and traffic lights at the kerb of both pavements, with the
    shadows they cast across the road."""
    lo, hi = -p.shoulder_left, cv.road_w + p.shoulder_right
    items = []
    for x_kerb, out in ((lo - KERB - 0.45, -1.0), (hi + KERB + 0.45, 1.0)):
        phase = rng.uniform(0.0, p.pole_spacing)
        for z in np.arange(phase + 3.0, min(cv.zmax, 160.0), p.pole_spacing):
            z = z + rng.uniform(-0.3, 0.3) * p.pole_spacing
            r = rng.random()
            kind = 0 if r >= p.signs else (1 if rng.random() < 0.75 else 2)
            items.append((z, x_kerb, out, kind, rng.uniform(5.5, 8.0), rng.integers(0, 4),
                          rng.random() < 0.5))
    for z, x, out, kind, lamp_h, colour, round_ in sorted(items, key=lambda t: -t[0]):
        if z < 1.5 or z > cv.zmax:
            continue
        h = lamp_h if kind == 0 else (2.6 if kind == 1 else 3.2)
        cv.tagged("poles")
        _pole(cv, x, z, h, 0.07 if kind else 0.09, out, kind, colour, round_)
        if p.shadow > 0:
            cv.tagged("poles", "shadows")
            segment_shadow(cv, x, z, x + p.sun_dx * h, z + p.sun_dz * h, 0.06, p.shadow)


def _pole(cv: Canvas, x, z, height, radius, out, kind, colour, round_) -> None:
    f = cv.f
    u = float(cv.column(x, z))
    vg = float(cv.ground_row(z))
    s = f / z  # pixels per metre
    vt = vg - s * height
    half = max(0.5, s * radius)
    ua = float(cv.column(x - out * 1.6, z)) if kind == 0 else u
    plate = 0.35 * s
    win = cv.window(min(u, ua) - plate - 1, max(u, ua) + plate + 1, vt - 2 * plate - 1, vg)
    if win is None:
        return
    rs, cs, uu, vv = win
    m = (np.abs(uu - F32(u)) <= half) & (vv >= vt) & (vv <= vg)
    shape = np.broadcast_shapes(uu.shape, vv.shape)
    if kind == 0:  # lamp: an arm over the road and a head, all one colour
        arm = max(0.7, 0.08 * s)
        a = (np.minimum(uu, F32(ua)) >= min(u, ua)) & (np.maximum(uu, F32(ua)) <= max(u, ua)) \
            & (np.abs(vv - F32(vt)) <= arm)
        head = (np.abs(uu - F32(ua)) <= max(1.0, 0.25 * s)) & (vv >= vt) & (
            vv <= vt + max(1.0, 0.15 * s))
        m = m | a | head
        cv.put(rs, cs, m, F32(z), np.array([0.45, 0.46, 0.47], F32))
        return
    rgb = np.empty((3,) + shape, F32)  # channels first
    rgb[:] = _col3((0.30, 0.31, 0.32))
    if kind == 1:  # sign: a disc or a plate on top
        du, dv = uu - F32(u), vv - F32(vt - plate)
        shape_m = (du * du + dv * dv <= plate * plate) if round_ else (
            (np.abs(du) <= plate) & (np.abs(dv) <= 0.75 * plate))
        rim = shape_m & (du * du + dv * dv > (0.7 * plate) ** 2) if round_ else np.zeros((), bool)
        body = _SIGN_RGB[colour]
        inner = (0.92, 0.92, 0.90) if round_ and colour == 0 else body
        np.copyto(rgb, _col3(inner), where=shape_m)
        np.copyto(rgb, _col3(body), where=shape_m & rim)
        m = m | shape_m
    else:  # traffic light: a dark box with three lamps
        box = (np.abs(uu - F32(u)) <= 0.18 * s) & (vv >= vt - 0.9 * s) & (vv <= vt)
        np.copyto(rgb, _col3((0.08, 0.08, 0.08)), where=box)
        lit = int(colour) % 3
        cy = vt - (0.75 - 0.3 * lit) * s
        lamp = ((uu - F32(u)) ** 2 + (vv - F32(cy)) ** 2) <= (0.1 * s) ** 2
        np.copyto(rgb, _col3(((0.9, 0.1, 0.1), (0.95, 0.7, 0.1), (0.1, 0.85, 0.3))[lit]),
                  where=lamp)
        m = m | box
    cv.put(rs, cs, m, F32(z), rgb, planar=True)


def _col3(rgb) -> np.ndarray:
    """A colour as a (3, 1, 1) float32 array (for channels-first pictures)."""
    return np.asarray(rgb, F32).reshape(3, 1, 1)


def segment_shadow(cv: Canvas, x0, z0, x1, z1, half_width, strength) -> None:
    """Darken the ground within ``half_width`` metres of the segment (x0,z0)-(x1,z1)."""
    zlo, zhi = max(min(z0, z1) - half_width, 1.0), min(max(z0, z1) + half_width, cv.zmax)
    if zlo >= zhi:
        return
    patch = cv.ground_patch(min(x0, x1) - half_width, max(x0, x1) + half_width, zlo, zhi)
    if patch is None:
        return
    rs, cs, vv, x, z = patch
    dx, dz = x1 - x0, z1 - z0
    n2 = dx * dx + dz * dz
    t = np.clip(((x - F32(x0)) * F32(dx) + (z - F32(z0)) * F32(dz)) / F32(max(n2, 1e-6)), 0, 1)
    d2 = (x - F32(x0) - t * F32(dx)) ** 2 + (z - F32(z0) - t * F32(dz)) ** 2
    m = (d2 < F32(half_width * half_width)) & (vv > F32(cv.v_end))
    if m.any():
        cv.darken(rs, cs, m, 1.0 - strength)


# --------------------------------------------------------------------------- vehicles
def parked_vehicles(cv: Canvas, p, rng) -> None:
    """Cars and vans parked along both kerbs, on the road's edge strip."""
    if p.parked <= 0:
        return
    lo, hi = -p.shoulder_left, cv.road_w + p.shoulder_right
    cars = []
    for xc in (lo + 1.0, hi - 1.0):
        z = rng.uniform(2.0, 8.0)
        while z < min(cv.zmax - 12.0, 90.0):
            kind = 0 if rng.random() < 0.85 else 1
            w, h, length = VEHICLE_SHAPES[kind]
            if rng.random() < p.parked:
                cars.append((z, xc + rng.normal(0, 0.1), w, h, length, rng.random() < 0.5,
                             rng.integers(0, 7)))
            z += length + rng.uniform(0.8, 3.0)
    from .synthetic_canvas import _CAR_COLOURS

    for z, xc, w, h, length, front, colour in sorted(cars):
        _draw_vehicle(cv, xc, z, w, h, length, _CAR_COLOURS[colour], False, front=front)


# --------------------------------------------------------------------------- people
_CLOTHES = np.array([[0.10, 0.10, 0.12], [0.25, 0.25, 0.30], [0.45, 0.15, 0.12],
                     [0.15, 0.22, 0.40], [0.55, 0.50, 0.42], [0.80, 0.78, 0.75],
                     [0.20, 0.35, 0.20]], F32)


def people(cv: Canvas, p, rng) -> None:
    """Pedestrians on the pavements (or verges) and cyclists near the kerb."""
    n, m = p.pedestrians, p.cyclists
    if n + m <= 0:
        return
    lo, hi = -p.shoulder_left, cv.road_w + p.shoulder_right
    figures = []
    for _ in range(n):
        left = rng.random() < 0.5
        sw = p.sidewalk_left if left else p.sidewalk_right
        off = KERB + rng.uniform(0.3, max(sw - 0.3, 0.4))
        x = lo - off if left else hi + off
        figures.append((rng.uniform(4.0, 60.0), x, False, rng.uniform(1.55, 1.9),
                        rng.integers(0, 7, 2), rng.uniform(-1, 1)))
    for _ in range(m):
        left = rng.random() < 0.6
        x = (lo + rng.uniform(0.6, 1.4)) if left else (hi - rng.uniform(0.6, 1.4))
        figures.append((rng.uniform(5.0, 50.0), x, True, rng.uniform(1.6, 1.85),
                        rng.integers(0, 7, 2), 0.0))
    for z, x, cyclist, height, clothes, stride in sorted(figures, key=lambda t: -t[0]):
        if z > cv.zmax:
            continue
        _figure(cv, x, z, height, cyclist, _CLOTHES[clothes[0]], _CLOTHES[clothes[1]], stride)


def _figure(cv: Canvas, x, z, height, cyclist, top, legs, stride) -> None:
    s = cv.f / z
    u = float(cv.column(x, z))
    vg = float(cv.ground_row(z))
    k = height / 1.75
    win = cv.window(u - 0.45 * s, u + 0.45 * s, vg - (height + 0.35 * cyclist) * s - 1, vg)
    if win is None:
        return
    rs, cs, uu, vv = win
    dx = (uu - F32(u)) / F32(s)  # metres sideways
    h = (F32(vg) - vv) / F32(s)  # metres above the ground
    lift = 0.35 if cyclist else 0.0
    hh = (h - F32(lift)) / F32(k)
    shape = np.broadcast_shapes(dx.shape, h.shape)
    rgb = np.empty((3,) + shape, F32)  # channels first
    rgb[:] = _col3(legs)
    spread = 0.1 + 0.06 * stride
    leg = (hh >= -lift / k) & (hh < 0.86) & (
        (np.abs(dx - spread * k) < 0.075 * k) | (np.abs(dx + spread * k) < 0.075 * k))
    torso_w = 0.2 + 0.04 * (hh - 0.85)
    torso = (hh >= 0.84) & (hh < 1.46) & (np.abs(dx) < torso_w * k)
    arms = (hh >= 0.92) & (hh < 1.42) & (np.abs(dx) >= torso_w * k) & (np.abs(dx) < 0.28 * k)
    head = (dx / F32(0.10 * k)) ** 2 + ((hh - 1.6) / 0.12) ** 2 < 1.0
    np.copyto(rgb, _col3(top), where=torso | arms)
    np.copyto(rgb, _col3((0.62, 0.48, 0.40)), where=head)
    np.copyto(rgb, _col3((0.15, 0.11, 0.08)), where=head & (hh > 1.64))  # hair
    mask = leg | torso | arms | head
    if cyclist:
        wheel = (np.abs(dx) < max(0.03, 0.5 / s)) & (h >= 0) & (h < 0.68)
        np.copyto(rgb, _col3((0.05, 0.05, 0.05)), where=wheel)
        mask = mask | wheel
    cv.put(rs, cs, mask, F32(z), rgb, planar=True)


# --------------------------------------------------------------------------- camera
@functools.lru_cache(maxsize=8)
def _radius2(height: int, width: int) -> np.ndarray:
    """Squared distance from the image centre, 1 at the corners."""
    v = (np.arange(height, dtype=F32) + F32(0.5 - height / 2)) / F32(height / 2)
    u = (np.arange(width, dtype=F32) + F32(0.5 - width / 2)) / F32(width / 2)
    return ((u[None, :] ** 2 + v[:, None] ** 2) / F32(2.0)).astype(F32)


def camera_effects(cv: Canvas, p) -> None:
    """Vignetting and motion blur (in place, after exposure and noise)."""
    img = cv.image  # (3, H, W)
    if p.motion > 0:
        n = max(2, int(round(p.motion * cv.H / 360.0)))
        pad = np.concatenate([np.repeat(img[:, :, :1], n // 2, 2), img,
                              np.repeat(img[:, :, -1:], n - n // 2, 2)], 2)
        c = np.empty(pad.shape[:2] + (pad.shape[2] + 1,), F32)  # running sums from 0
        c[:, :, 0] = 0
        np.cumsum(pad, axis=2, dtype=F32, out=c[:, :, 1:])
        img = (c[:, :, n:n + cv.W] - c[:, :, :cv.W]) / F32(n)
    if p.vignette > 0:
        img *= F32(1.0) - F32(p.vignette) * _radius2(cv.H, cv.W)
    cv.image = img.astype(F32, copy=False)


def distort(image, label, trace, k: float):
    """Radial lens distortion ``k`` (positive: barrel), resampled by nearest neighbour so
    that image and label move together; the corners stay inside the frame."""
    H, W = label.shape
    r2 = _radius2(H, W)
    scale = F32(k) * r2
    scale += F32(1.0)
    scale /= F32(1.0 + max(k, 0.0))
    v = (np.arange(H, dtype=F32) + F32(0.5 - H / 2))[:, None]
    u = (np.arange(W, dtype=F32) + F32(0.5 - W / 2))[None, :]

    def source(pos, centre, n):  # nearest source index along one axis, in place
        pos = pos * scale
        pos += F32(centre)
        np.rint(pos, out=pos)
        np.clip(pos, 0, n - 1, out=pos)
        return pos.astype(np.int32)

    flat = source(v, H / 2 - 0.5, H)
    flat *= W
    flat += source(u, W / 2 - 0.5, W)
    image = np.stack([np.take(plane, flat, mode="wrap") for plane in image.reshape(3, -1)])
    label = label.ravel()[flat]
    if trace is not None:
        trace = trace.ravel()[flat]
    # keep the labelling rule: a marking has surface on both sides in its row
    surface = label != 0
    alone = label == MARKINGS
    alone[:, 1:-1] &= ~(surface[:, :-2] & surface[:, 2:])
    label[alone] = ROAD
    return image, label, trace


def jpeg(image, quality: int):
    """The (3,H,W) picture after JPEG compression at ``quality`` (blocking, ringing)."""
    from PIL import Image

    rgb = (np.clip(image, 0, 1) * F32(255) + F32(0.5)).astype(np.uint8)
    buf = io.BytesIO()
    Image.merge("RGB", [Image.fromarray(plane) for plane in rgb]).save(
        buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    decoded = Image.open(buf)
    if decoded.mode != "RGB":
        decoded = decoded.convert("RGB")
    out = np.stack([np.asarray(plane) for plane in decoded.split()]).astype(F32)
    out *= F32(1 / 255)
    return out
