"""The web layer of ``segscope explore``: a Starlette app over an :class:`Explorer`.

Starlette (with uvicorn as the server) is a small, well-kept ASGI toolkit: routing, static
files and a test client, no template engine or front-end build. The page is plain
HTML/JavaScript/CSS served from this package, so it works offline. Every answer to a bad
request is a 4xx with ``{"error": "<one line>"}`` that the page shows; an unexpected
failure is logged on the server and answered with a one-line 500, and the server keeps
serving either way.
"""

from __future__ import annotations

import io
import json
import logging
from importlib import resources
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..errors import SegscopeError
from .catalog import Forbidden, NotFound, TooLarge
from .engine import Explorer

#: Largest JSON request body (a brushed mask is sent as runs; a 4K mask fits easily).
MAX_JSON = 8 * 1024 * 1024

log = logging.getLogger("segscope.explore")


def create_app(explorer: Explorer, host: str = "127.0.0.1") -> Starlette:
    """The ASGI app serving ``explorer``'s page and API.

    Requests must name this machine in their ``Host`` header (``127.0.0.1``,
    ``localhost`` or the ``host`` served on), so that a web page elsewhere cannot reach
    the API through DNS rebinding; serving on ``0.0.0.0``/``::`` accepts any name.
    """
    static = resources.files("segscope.explore") / "static"
    index = (static / "index.html").read_text(encoding="utf-8")

    async def page(request: Request) -> Response:
        return HTMLResponse(index)

    async def info(request: Request) -> Response:
        return JSONResponse(explorer.info())

    async def images(request: Request) -> Response:
        return JSONResponse(explorer.catalog.listing())

    def view(request: Request) -> Response:
        out = explorer.view(request.path_params["item"])
        explorer.warm(request.path_params["item"])
        return JSONResponse(_clean(out))

    def picture(request: Request) -> Response:
        p = request.path_params
        return _png(explorer.picture(p["item"], p["what"]))

    async def open_path(request: Request) -> Response:
        body = await _json(request)
        path = body.get("path", "")
        if not isinstance(path, str):
            raise SegscopeError(f"path must be a string, got {type(path).__name__}")
        item = explorer.catalog.open_path(path)
        return JSONResponse(item.describe())

    async def upload(request: Request) -> Response:
        limit = explorer.catalog.max_upload
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise TooLarge(f"upload of {declared} bytes is over the limit of {limit} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise TooLarge(f"upload is over the limit of {limit} bytes")
            chunks.append(chunk)
        name = request.query_params.get("name", "upload")
        item = explorer.catalog.add_upload(b"".join(chunks), name)
        return JSONResponse(item.describe())

    async def explain(request: Request) -> Response:
        body = await _json(request)
        r = await run_in_threadpool(explorer.explain, body)
        return JSONResponse(_clean(r.numbers))

    async def compare(request: Request) -> Response:
        body = await _json(request)
        return JSONResponse(_clean(await run_in_threadpool(explorer.compare, body)))

    def numbers(request: Request) -> Response:
        r = explorer.result(request.path_params["rid"])
        return _download(JSONResponse(_clean(r.numbers)), f"segscope-{r.id}.json")

    def result_file(request: Request) -> Response:
        p = request.path_params
        r = explorer.result(p["rid"])
        name, ext = p["name"], p["ext"]
        arrays = {"pixels": r.pixels, "heatmap": r.pixels, "overlay": r.pixels,
                  "concept": r.selection}
        if r.curve is not None:
            arrays["switch_off"] = np.stack([r.curve.pixel_share, r.curve.relevance_share])
        if name not in arrays or ext not in ("npy", "png"):
            raise NotFound(f"unknown file {name}.{ext} (pixels, heatmap, overlay, concept: "
                           ".png or .npy; switch_off.npy)")
        if ext == "npy":
            return _download(_npy(arrays[name]), f"segscope-{r.id}-{name}.npy")
        if name == "overlay":
            return _png(_overlay(r.image, r.pixels))
        if name == "concept":
            return _png(r.selection.astype(np.uint8) * 255)
        if name == "switch_off":
            raise NotFound("the switch-off curve comes as .npy (and in numbers.json)")
        return _png(_heatmap(r.pixels))

    async def layers(request: Request) -> Response:
        r = await run_in_threadpool(explorer.layers, request.path_params["rid"])
        return JSONResponse(_clean({"id": r.id, "layers": r.numbers["layers"]}))

    def layer_file(request: Request) -> Response:
        p = request.path_params
        r = explorer.layers(p["rid"])
        if p["layer"] not in r.layers:
            raise NotFound(f"layer {p['layer']!r} is not in this result")
        m = r.layers[p["layer"]]
        if p["ext"] == "npy":
            return _download(_npy(m), f"segscope-{r.id}-{p['layer']}.npy")
        return _png(_heatmap(m))

    async def profile(request: Request) -> Response:
        body = await _json(request)
        r = explorer.result(request.path_params["rid"])
        return JSONResponse(_clean(await run_in_threadpool(explorer.profile, r,
                                                           body.get("layer"))))

    async def separate(request: Request) -> Response:
        body = await _json(request)
        job = explorer.separate(request.path_params["rid"], body.get("layer"),
                                body.get("top", 16))
        return JSONResponse(job.describe())

    def job_state(request: Request) -> Response:
        return JSONResponse(_clean(explorer.job(request.path_params["jid"]).describe()))

    def job_cancel(request: Request) -> Response:
        job = explorer.job(request.path_params["jid"])
        job.cancel.set()
        return JSONResponse(job.describe())

    def job_file(request: Request) -> Response:
        p = request.path_params
        job = explorer.job(p["jid"])
        if p["index"] == "all":
            if p["ext"] != "npy":
                raise NotFound("all maps come as .npy only")
            return _download(_npy(job.maps[: job.done]),
                             f"segscope-{job.layer}-features.npy")
        try:
            i = int(p["index"])
        except ValueError:
            raise NotFound(f"unknown feature {p['index']!r}") from None
        if not 0 <= i < job.done:
            raise NotFound(f"feature {i} is not separated (yet): {job.done} done")
        if p["ext"] == "npy":
            return _download(_npy(job.maps[i]),
                             f"segscope-{job.layer}-{job.channels[i]}.npy")
        return _png(_heatmap(job.maps[i], job.limit()))

    async def no_icon(request: Request) -> Response:
        return Response(status_code=204)  # browsers ask; a 404 is a console error

    routes = [
        Route("/", page),
        Route("/favicon.ico", no_icon),
        Route("/api/info", info),
        Route("/api/images", images),
        Route("/api/images/{item}", view),
        Route("/api/images/{item}/{what}.png", picture),
        Route("/api/open", open_path, methods=["POST"]),
        Route("/api/upload", upload, methods=["POST"]),
        Route("/api/explain", explain, methods=["POST"]),
        Route("/api/compare", compare, methods=["POST"]),
        Route("/api/results/{rid}/numbers.json", numbers),
        Route("/api/results/{rid}/layers.json", layers),
        Route("/api/results/{rid}/profile", profile, methods=["POST"]),
        Route("/api/results/{rid}/separate", separate, methods=["POST"]),
        Route("/api/results/{rid}/layer/{layer}.{ext:str}", layer_file),
        Route("/api/results/{rid}/{name}.{ext:str}", result_file),
        Route("/api/jobs/{jid}", job_state),
        Route("/api/jobs/{jid}/cancel", job_cancel, methods=["POST"]),
        Route("/api/jobs/{jid}/feature/{index}.{ext:str}", job_file),
        Mount("/static", StaticFiles(directory=str(static)), name="static"),
    ]
    handlers = {SegscopeError: _error, HTTPException: _http_error, Exception: _crash}
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    hosts = ["*"] if host in ("0.0.0.0", "::", "") else \
        sorted({"127.0.0.1", "localhost", "::1", "[::1]", host})
    app = Starlette(routes=routes, exception_handlers=handlers,
                    middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=hosts)])
    app.state.explorer = explorer
    return app


# -- responses -----------------------------------------------------------------------------
async def _error(request: Request, exc: Exception) -> Response:
    status = 404 if isinstance(exc, NotFound) else 403 if isinstance(exc, Forbidden) \
        else 413 if isinstance(exc, TooLarge) else 400
    return JSONResponse({"error": _one_line(exc)}, status_code=status)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    text = exc.detail if isinstance(exc.detail, str) else "bad request"
    if exc.status_code == 404:
        text = f"not found: {request.url.path[:200]}"
    elif exc.status_code == 405:
        text = f"{request.method} is not allowed on {request.url.path[:200]}"
    return JSONResponse({"error": text}, status_code=exc.status_code)


async def _crash(request: Request, exc: Exception) -> Response:
    log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"error": f"internal error ({type(exc).__name__}); the server log "
                                  "has the details"}, status_code=500)


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())[:1000] or type(exc).__name__


async def _json(request: Request) -> dict[str, Any]:
    # JSON only: a form or text/plain post from another site's page is refused (such a
    # request is "simple" and skips the browser's cross-origin preflight).
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise SegscopeError(f"the request body must be JSON (Content-Type: application/json), "
                            f"got {kind or 'no content type'!r}")
    body = await request.body()
    if len(body) > MAX_JSON:
        raise TooLarge(f"request of {len(body)} bytes is over the limit of {MAX_JSON} bytes")
    try:
        data = json.loads(body or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise SegscopeError("the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise SegscopeError("the request body must be a JSON object")
    return data


def _png(arr: np.ndarray) -> Response:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG", compress_level=1)
    return Response(buf.getvalue(), media_type="image/png",
                    headers={"Cache-Control": "no-store"})


def _npy(arr: np.ndarray) -> Response:
    buf = io.BytesIO()
    np.save(buf, np.asarray(arr), allow_pickle=False)
    return Response(buf.getvalue(), media_type="application/octet-stream")


def _download(resp: Response, filename: str) -> Response:
    resp.headers["Content-Disposition"] = f'inline; filename="{filename}"'
    return resp


def _heatmap(m: np.ndarray, limit: float | None = None) -> np.ndarray:
    from ..viz.cmap import heatmap_rgb

    return heatmap_rgb(m, limit)


def _overlay(image, pixels: np.ndarray) -> np.ndarray:
    from ..viz.cmap import overlay_rgb

    return np.round(np.clip(overlay_rgb(image, pixels), 0, 1) * 255).astype(np.uint8)


def _clean(obj: Any) -> Any:
    """JSON-safe: NaN and infinities become null (JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        return _clean(obj.item())
    return obj
