"""``segscope explore``: a local web page to point at a decision and see why it was made.

:class:`~segscope.explore.engine.Explorer` computes (no web code, usable alone);
:func:`~segscope.explore.app.create_app` serves it with Starlette (the optional extra
``pip install -e ".[explore]"``); :func:`serve` runs it with uvicorn.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import SegscopeError
from .catalog import Catalog
from .engine import Explorer

__all__ = ["Catalog", "Explorer", "create_app", "serve", "running"]


def create_app(explorer: Explorer, host: str = "127.0.0.1"):
    """The Starlette app of ``explorer`` (needs the ``explore`` extra); ``host`` is the
    address it is served on (requests must name it, or localhost)."""
    from .app import create_app as _create

    return _create(explorer, host)


def serve(explorer: Explorer, host: str = "127.0.0.1", port: int = 8765,
          quiet: bool = False) -> None:
    """Serve ``explorer`` on ``host:port`` until Ctrl-C (needs the ``explore`` extra)."""
    import uvicorn

    uvicorn.run(create_app(explorer, host), host=host, port=port,
                log_level="warning" if quiet else "info", access_log=False)


@contextmanager
def running(explorer: Explorer, host: str = "127.0.0.1", port: int = 0,
            timeout: float = 30.0) -> Iterator[str]:
    """Serve ``explorer`` in a background thread; yields the page's address.

    For scripts, tests and benchmarks: ``with running(explorer) as url: ...``; port 0
    takes a free port. The server stops when the block ends.
    """
    import socket
    import threading
    import time

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    config = uvicorn.Config(create_app(explorer, host), log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True,
                              name="segscope-explore")
    thread.start()
    start = time.monotonic()
    while not server.started:
        if not thread.is_alive() or time.monotonic() - start > timeout:
            sock.close()
            raise SegscopeError("the explore server did not start")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()
