"""What the explore tests share: a tiny model, a folder of pictures, a server, requests."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
from _models import tiny_model  # noqa: F401  (the explore tests import it from here)

from segscope.data.io import write_png

#: Image size of the synthetic scenes the tests open (small: every request is fast).
SIZE = (64, 96)


def picture_folder(root: Path) -> tuple[Path, Path]:
    """``root/pics`` with two pictures and a link out of it; ``root/secret.png`` outside."""
    pics = root / "pics"
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        write_png(pics / name, rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    secret = root / "secret.png"
    write_png(secret, rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    (pics / "link.png").symlink_to(secret)
    return pics, secret


def request(url: str, body=None, raw: bytes | None = None, method: str | None = None):
    """(status, parsed JSON or bytes) of one request; 4xx/5xx are returned, not raised."""
    data, headers = None, {}
    if raw is not None:
        data, headers = raw, {"Content-Type": "application/octet-stream"}
    elif body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            status, payload, kind = resp.status, resp.read(), resp.headers["Content-Type"]
    except urllib.error.HTTPError as exc:
        status, payload, kind = exc.code, exc.read(), exc.headers["Content-Type"]
    if kind and kind.startswith("application/json"):
        return status, json.loads(payload)
    return status, payload


def npy(payload: bytes) -> np.ndarray:
    return np.load(io.BytesIO(payload), allow_pickle=False)
