"""The drawing surface of the synthetic generator and the shapes several scene parts share.

:class:`Canvas` holds a scene's picture, label, depth buffer and camera; the value-noise
textures, the fence/strip projector and the vehicle drawer are used both by the highway
scene (:mod:`.synthetic_render`) and by the street elements (:mod:`.synthetic_elements`).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from .synthetic_factors import FACTORS

#: Bit ``i`` of a trace marks the pixels that factor ``FACTOR_BITS[i]`` acted on.
FACTOR_BITS: tuple[str, ...] = tuple(FACTORS)

TILE = 512  # noise tiles (power of two: indices wrap with a bit mask)
FINE = 1024  # pixel-space grain tile
F32 = np.float32


def _value_noise(rng: np.random.Generator, n: int, cells: int) -> np.ndarray:
    """Tileable smooth value noise, ``n`` x ``n``, with ``cells`` lattice cells per side."""
    g = rng.random((cells, cells)).astype(F32)
    x = np.arange(n, dtype=F32) * cells / n
    i0 = np.floor(x).astype(np.int64)
    t = x - i0
    t = t * t * (3 - 2 * t)
    i1 = (i0 + 1) % cells
    rows = g[i0] * (1 - t)[:, None] + g[i1] * t[:, None]
    return rows[:, i0] * (1 - t) + rows[:, i1] * t


@functools.lru_cache(maxsize=1)
def textures() -> dict[str, np.ndarray]:
    """Fixed noise tiles shared by all scenes (built once, from a fixed seed)."""
    rng = np.random.default_rng(20240611)

    def fbm(octaves, gain=0.55):
        out = np.zeros((TILE, TILE), F32)
        amp = 1.0
        for cells in octaves:
            out += amp * _value_noise(rng, TILE, cells)
            amp *= gain
        out -= out.mean()
        return (out / out.std()).astype(F32)

    n1 = 4096
    x1 = np.arange(n1, dtype=F32)
    profile = np.zeros(n1, F32)
    for cells, amp in ((6, 1.0), (24, 0.4), (96, 0.15), (384, 0.07)):
        g = rng.random(cells).astype(F32)
        xs = x1 * cells / n1
        i0 = np.floor(xs).astype(np.int64)
        t = xs - i0
        t = t * t * (3 - 2 * t)
        profile += amp * (g[i0] * (1 - t) + g[(i0 + 1) % cells] * t)
    return {
        "ground": fbm((4, 8, 16, 32, 64, 128)),
        "clouds": fbm((2, 4, 8, 16, 32, 64), gain=0.6),
        # the grain tile repeated twice each way: any window of it up to FINE x FINE is a
        # plain slice (a view), wherever it starts
        "fine": np.tile((rng.standard_normal((FINE, FINE)) * 0.6
                         + 0.4 * np.repeat(np.repeat(rng.standard_normal((FINE // 2, FINE // 2)),
                                                     2, 0), 2, 1)).astype(F32), (2, 2)),
        "profile": ((profile - profile.min()) / (profile.max() - profile.min())).astype(F32),
        "hash": rng.random(4096).astype(F32),
    }


def fmod(a, b) -> np.ndarray:
    """``np.mod(a, b)`` for float32 ``a`` and a positive divisor ``b`` (taken as float32),
    to the bit, about five times faster than numpy's float remainder loop: the float64
    quotient is off by at most one below an integer, which the last step corrects, and
    ``a - n*b`` is exact in float64."""
    a64 = np.asarray(a, np.float64)
    b64 = np.asarray(b, F32).astype(np.float64)
    r = np.floor(a64 / b64)
    r *= b64
    np.subtract(a64, r, out=r)
    r = np.where(r < 0, r + b64, r)
    return r.astype(F32)


def _grain(tex, r0: int, r1: int, width: int, ox: int, oy: int) -> np.ndarray:
    """Pixel-space noise for rows r0:r1 (a read-only view of the grain tile when it fits)."""
    tile = tex["fine"]
    ox, oy = ox % FINE, oy % FINE
    if oy + r1 <= 2 * FINE and ox + width <= 2 * FINE:
        return tile[oy + r0:oy + r1, ox:ox + width]
    rows = (np.arange(r0, r1) + oy) % FINE
    cols = (np.arange(width) + ox) % FINE
    return tile[np.ix_(rows, cols)]


class Canvas:
    """Image, depth and occlusion buffers plus the camera model."""

    def __init__(self, p, height: int, width: int) -> None:
        self.p, self.H, self.W = p, height, width
        self.f = (width / 2) / math.tan(math.radians(p.hfov) / 2)
        self.cx, self.cy = width / 2, height / 2
        self.vh = self.cy - self.f * math.tan(p.pitch)
        self.scale = height / 360.0
        u = np.arange(width, dtype=F32) + F32(0.5 - self.cx)
        v = np.arange(height, dtype=F32) + F32(0.5 - self.cy)
        if p.roll:
            c, s = math.cos(p.roll), math.sin(p.roll)
            self.uu = (u[None, :] * F32(c) + v[:, None] * F32(s)).astype(F32)
            self.vv = (-u[None, :] * F32(s) + v[:, None] * F32(c) + F32(self.cy)).astype(F32)
        else:
            self.uu = u[None, :]
            self.vv = v[:, None] + F32(self.cy)
        # channels first: per-channel passes run over whole contiguous planes
        self.image = np.empty((3, height, width), F32)
        self.depth = np.full((height, width), np.inf, F32)
        self.covered = np.zeros((height, width), bool)  # an object was drawn here
        self.shadow = None  # (H,W) multiplier on the ground, made on first use
        # which factors acted on each pixel (bit i: FACTOR_BITS order); only when traced
        self.trace: np.ndarray | None = None
        self.tag = 0
        lw = p.lane_width
        self.road_w = p.lanes * lw
        self.xcam = (p.ego_lane + 0.5) * lw + p.ego_offset

    def ground_row(self, z):
        """Row (un-rolled) where the ground at distance ``z`` appears."""
        p = self.p
        return self.vh + self.f * (p.cam_height - 0.5 * p.slope * z * z) / z

    def column(self, x, z):
        """Centred un-rolled column of road coordinate ``x`` at distance ``z``."""
        p = self.p
        return self.f * (x - self.xcam + 0.5 * p.curvature * z * z + p.yaw * z) / z

    def window(self, u0, u1, v0, v1):
        """Image slices covering the un-rolled box [u0,u1]x[v0,v1] and its coordinates."""
        # plain float arithmetic: called for every object, often for one off the image
        u0, u1, v0, v1 = float(u0), float(u1), float(v0), float(v1)
        if not (math.isfinite(u0) and math.isfinite(u1) and math.isfinite(v0)
                and math.isfinite(v1)):
            return None
        if self.p.roll:
            c, s = math.cos(self.p.roll), math.sin(self.p.roll)
            a0, a1 = v0 - self.cy, v1 - self.cy
            iu = (u0 * c - a0 * s + self.cx, u1 * c - a0 * s + self.cx,
                  u0 * c - a1 * s + self.cx, u1 * c - a1 * s + self.cx)
            iv = (u0 * s + a0 * c + self.cy, u1 * s + a0 * c + self.cy,
                  u0 * s + a1 * c + self.cy, u1 * s + a1 * c + self.cy)
            c0, c1, r0, r1 = min(iu), max(iu), min(iv), max(iv)
        else:
            c0, c1, r0, r1 = u0 + self.cx, u1 + self.cx, v0, v1
        r0 = int(max(0, math.floor(r0)))
        r1 = int(min(self.H, math.ceil(r1) + 1))
        c0 = int(max(0, math.floor(c0)))
        c1 = int(min(self.W, math.ceil(c1) + 1))
        if r0 >= r1 or c0 >= c1:
            return None
        rs, cs = slice(r0, r1), slice(c0, c1)
        if self.p.roll:
            return rs, cs, self.uu[rs, cs], self.vv[rs, cs]
        return rs, cs, self.uu[:, cs], self.vv[rs, :]

    def ground_patch(self, x0, x1, z0, z1):
        """The image window over the ground rectangle [x0,x1]x[z0,z1] (road metres, with
        z0 < z1 <= zmax) and the road coordinates of its pixels: ``(rs, cs, vv, x, z)``,
        or None when the rectangle is off the image."""
        cu = [float(self.column(xx, zz)) for xx in (x0, x1) for zz in (z0, z1)]
        win = self.window(min(cu), max(cu), float(self.ground_row(z1)),
                          float(self.ground_row(z0)))
        if win is None:
            return None
        rs, cs, uu, vv = win
        p = self.p
        z = np.interp(vv, self.vz[::-1], self.zs[::-1]).astype(F32)
        x = uu * z / F32(self.f) + (F32(self.xcam) - F32(0.5 * p.curvature) * z * z
                                    - F32(p.yaw) * z)
        return rs, cs, vv, x, z

    def put(self, rs, cs, mask, z, colour, planar: bool = False) -> None:
        """Depth-tested paint of ``colour`` ((3,), (h,w,3), or (3,h,w) with ``planar``)
        where ``mask``."""
        depth = self.depth[rs, cs]
        mask = mask & (z < depth)
        if not mask.any():
            return
        if np.ndim(z):
            z = np.broadcast_to(z, mask.shape)
        np.copyto(depth, z, where=mask)
        colour = np.asarray(colour)
        if colour.ndim == 1:
            colour = colour[:, None, None]
        elif not planar:
            colour = colour.transpose(2, 0, 1)
        np.copyto(self.image[:, rs, cs], colour, where=mask)
        self.covered[rs, cs] |= mask
        if self.trace is not None:
            self.trace[rs, cs] |= np.where(mask, self.tag, 0).astype(np.uint32)

    def claim(self, rs, cs, mask, z) -> tuple[np.ndarray, np.ndarray]:
        """The pixels of ``mask`` (in the window ``rs, cs``) nearer than ``z`` to what is
        drawn there: their flat indices in the window and in the image, for an element
        that shades only those (then :meth:`paint` them)."""
        local = np.flatnonzero(mask & (z < self.depth[rs, cs]))
        w = cs.stop - cs.start
        # window row r, column c (local = r*w + c) is image pixel (r0+r)*W + c0+c
        pixels = local // w
        pixels *= self.W - w
        pixels += local
        pixels += rs.start * self.W + cs.start
        return local, pixels

    def paint(self, pixels, z, colour) -> None:
        """Draw ``colour`` (3, n) at depth ``z`` (n,) on the flat image ``pixels`` of
        :meth:`claim` (the same as :meth:`put` does on a mask)."""
        self.depth.reshape(-1)[pixels] = z
        for plane, values in zip(self.image.reshape(3, -1), colour, strict=True):
            plane[pixels] = values  # one plane at a time: numpy's fast 1-d scatter
        self.covered.reshape(-1)[pixels] = True
        if self.trace is not None:
            self.trace.reshape(-1)[pixels] |= np.uint32(self.tag)

    def darken(self, rs, cs, mask, factor: float) -> None:
        """Shade the ground under ``mask`` (contact shadows)."""
        if self.shadow is None:
            self.shadow = np.ones((self.H, self.W), F32)
        under = self.shadow[rs, cs]
        np.multiply(under, F32(factor), out=under, where=mask)
        if self.trace is not None:
            self.trace[rs, cs] |= np.where(mask, self.tag, 0).astype(np.uint32)

    def tagged(self, *names: str) -> Canvas:
        """Set the factors that the next drawing belongs to (for the trace)."""
        self.tag = 0
        for name in names:
            self.tag |= 1 << FACTOR_BITS.index(name)
        return self


KERB = 0.15


def _fence(cv: Canvas, x_pos: float, height: float):
    """Yield (slices, mask, z, height-above-ground) of a vertical strip along the road at
    road coordinate ``x_pos``, ``height`` metres tall, one per monotone piece of its
    projection (a bend can fold it back on itself)."""
    zz = cv.zs[cv.zs > 1.0]
    if zz.size < 2:
        return
    u = cv.column(x_pos, zz)
    d = np.sign(np.diff(u))
    cuts = np.nonzero(d[1:] != d[:-1])[0] + 1
    for piece in np.split(np.arange(len(zz)), cuts):
        if len(piece) < 2:
            continue
        up, zp = u[piece], zz[piece]
        keep = np.abs(up) < 4 * cv.W
        if keep.sum() < 2:
            continue
        up, zp = up[keep], zp[keep]
        order = np.argsort(up)
        up, zp = up[order], zp[order]
        vg = cv.ground_row(zp)
        vt = vg - cv.f * height / zp
        # cut into column chunks with tight row ranges (the strip is a thin diagonal)
        n_chunks = int(np.clip((up[-1] - up[0]) // 24, 1, 12))
        edges = np.linspace(up[0], up[-1], n_chunks + 1)
        v_lo, v_hi = float(vt.min()), float(vg.max())
        for a, b in zip(edges[:-1], edges[1:], strict=True):
            if cv.window(a, b, v_lo, v_hi) is None:
                continue  # off the image even with the whole strip's rows (cheap test)
            sel = (up >= a - 1) & (up <= b + 1)
            lo = np.searchsorted(up, a, side="right") - 1
            hi = np.searchsorted(up, b, side="left") + 1
            sel[max(lo, 0):min(hi, len(up))] = True
            win = cv.window(a, b, vt[sel].min(), vg[sel].max())
            if win is None:
                continue
            rs, cs, uu, vv = win
            inside = (uu >= a) & (uu <= b)
            zc = np.interp(uu, up, zp).astype(F32)
            hgt = (cv.ground_row(zc) - vv) * zc / F32(cv.f)
            ok = inside & (hgt >= -0.02) & (hgt <= height)
            yield rs, cs, ok, zc, hgt


def _ground_shadow(cv: Canvas, xs: float, zs: float, r: float, strength: float) -> None:
    """Darken an ellipse of radius ``r`` metres on the ground around (xs, zs)."""
    z0, z1 = zs - r, zs + r
    if z0 < 1.0 or z0 > cv.zmax:
        return
    patch = cv.ground_patch(xs - r, xs + r, z0, min(z1, cv.zmax))
    if patch is None:
        return
    rs, cs, vv, x, z = patch
    d2 = ((x - F32(xs)) / F32(r)) ** 2 + ((z - F32(zs)) / F32(r)) ** 2
    m = (d2 < 1.0) & (vv > F32(cv.v_end))
    if m.any():
        cv.darken(rs, cs, m, 1.0 - strength)


_CAR_COLOURS = np.array(
    [[0.85, 0.85, 0.85], [0.55, 0.56, 0.58], [0.08, 0.08, 0.09], [0.60, 0.08, 0.07],
     [0.10, 0.18, 0.45], [0.30, 0.32, 0.30], [0.75, 0.72, 0.62]], F32)


VEHICLE_SHAPES = ((1.8, 1.45, 4.5), (2.0, 2.1, 5.2), (2.5, 3.1, 11.0), (2.5, 3.6, 12.0))


def _draw_vehicle(cv: Canvas, xc, z0, width, height, length, body, truck,
                  front: bool = False) -> None:
    f = cv.f
    z1 = z0 + length
    ul, ur = float(cv.column(xc - width / 2, z0)), float(cv.column(xc + width / 2, z0))
    vb = float(cv.ground_row(z0))
    vt = vb - f * height / z0
    clear = f * 0.22 / z0  # ground clearance, pixels
    # soft contact shadow on the ground below and just behind the bumper
    below = max(1.5, f * 0.5 / z0)
    win = cv.window(ul - 1, ur + 1, vb - clear - 1, vb + below)
    if win is not None:
        rs, cs, uu, vv = win
        m = (uu >= ul - 0.5) & (uu <= ur + 0.5) & (vv >= vb - clear - 1) & (vv <= vb + below)
        cv.darken(rs, cs, m, 0.4)
    # side face, visible when the vehicle is off to one side of the camera
    xs = xc - width / 2 if ul > 0 else (xc + width / 2 if ur < 0 else None)
    if xs is not None:
        ua, ub = float(cv.column(xs, z0)), float(cv.column(xs, z1))
        vbb = float(cv.ground_row(z1))
        vtb = vbb - f * height / z1
        win = cv.window(min(ua, ub), max(ua, ub), min(vt, vtb), max(vb, vbb))
        if win is not None and abs(ub - ua) > 0.3:
            rs, cs, uu, vv = win
            t = np.clip((uu - F32(ua)) / F32(ub - ua), 0, 1)
            top = F32(vt) + t * F32(vtb - vt)
            bot = F32(vb) + t * F32(vbb - vb)
            inside = ((uu - F32(ua)) * (uu - F32(ub)) <= 0) & (vv >= top) & (vv <= bot)
            zz = F32(z0) + t * F32(length)
            local, pixels = cv.claim(rs, cs, inside, zz)
            if local.size:
                shape = inside.shape
                bot, top = pick(bot, local, shape), pick(top, local, shape)
                hrel = (bot - pick(vv, local, shape)) / np.maximum(bot - top, F32(1e-3))
                rgb = np.empty((3, local.size), F32)
                rgb[:] = (body * F32(0.72))[:, None]
                if not truck:
                    rgb[:, (hrel > 0.62) & (hrel < 0.92)] = _col(0.12, 0.13, 0.15)
                rgb[:, hrel < 0.16] = _col(0.05, 0.05, 0.05)
                cv.paint(pixels, pick(zz, local, shape), rgb)
    # rear face
    win = cv.window(ul, ur, vt, vb)
    if win is None:
        return
    rs, cs, uu, vv = win
    inside = (uu >= ul) & (uu <= ur) & (vv >= vt) & (vv <= vb)
    hrel = (F32(vb) - vv) / F32(max(vb - vt, 1e-3))
    wrel = (uu - F32(ul)) / F32(max(ur - ul, 1e-3))
    under = hrel < clear / max(vb - vt, 1e-3)
    if not truck:
        # the cabin is narrower than the body
        inside = inside & ~((hrel > 0.6) & (np.abs(wrel - F32(0.5)) > F32(0.5)
                                             - F32(0.25) * (hrel - F32(0.6))))
    tyres = under & ((wrel < 0.2) | (wrel > 0.8))
    mask = inside & (~under | tyres)
    local, pixels = cv.claim(rs, cs, mask, F32(z0))
    if not local.size:
        return
    # colours of the pixels that show only
    hrel, wrel = pick(hrel, local, mask.shape), pick(wrel, local, mask.shape)
    rgb = np.empty((3, local.size), F32)
    rgb[:] = body[:, None]
    if truck:
        rgb *= F32(0.9) + F32(0.1) * (fmod(wrel * 6, 1) < 0.5)
        rgb[:, hrel < 0.12] = F32(0.1)
        rgb[:, (hrel > 0.14) & (hrel < 0.2) & ((wrel < 0.12) | (wrel > 0.88))] = _col(
            0.8, 0.06, 0.05)
    else:
        rgb[:, (hrel > 0.6) & (hrel < 0.92) & (wrel > 0.1) & (wrel < 0.9)] = _col(
            0.10, 0.11, 0.13)
        lamp = _col(0.95, 0.93, 0.80) if front else _col(0.78, 0.06, 0.05)
        rgb[:, (hrel > 0.45) & (hrel < 0.58) & ((wrel < 0.17) | (wrel > 0.83))] = lamp
        rgb[:, (hrel > 0.3) & (hrel < 0.38) & (wrel > 0.38) & (wrel < 0.62)] = _col(
            0.85, 0.85, 0.8)
        dark = hrel < 0.3
        rgb[:, dark] *= F32(0.55)
    rgb[:, hrel < clear / max(vb - vt, 1e-3)] = F32(0.04)
    cv.paint(pixels, np.full(local.size, z0, F32), rgb)


def _col(*rgb: float) -> np.ndarray:
    """A colour as a (3, 1) float32 column (for channels-first pixel lists)."""
    return np.array(rgb, F32)[:, None]


def pick(a, local, shape) -> np.ndarray:
    """``a`` (broadcastable to the window ``shape``: (h,w), (h,1), (1,w) or a scalar) at
    the window's flat pixel indices ``local`` (from :meth:`Canvas.claim`)."""
    a = np.asarray(a)
    if a.ndim == 0:
        return np.full(local.size, a, a.dtype)
    h, w = shape
    if a.shape == (h, w):
        return np.take(np.ascontiguousarray(a).reshape(-1), local, mode="wrap")
    if a.shape[0] == 1:
        return np.take(a.reshape(-1), local % w)
    return np.take(a.reshape(-1), local // w)
