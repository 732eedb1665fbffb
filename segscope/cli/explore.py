"""``segscope explore``: a local web page to point at a decision and see why it was made."""

from __future__ import annotations

import click

from ._options import MAX_SIDE, dataset_kind_options, device_option, parse_size

INSTALL_HINT = 'segscope explore needs its web stack: pip install -e ".[explore]"'


@click.command("explore")
@click.option("--checkpoint", "-c", required=True, type=click.Path(),
              help="Model file written by segscope train.")
@click.option("--data", "data", multiple=True,
              help="A dataset folder, a folder of pictures, or synthetic:N[:PRESET[:SEED]] "
                   "(repeatable). Only files under these folders are served.")
@click.option("--diagnosis", type=click.Path(), default=None,
              help="A segscope diagnose folder: walk its real images from the most to the "
                   "least likely to fail (their folder must be given with --data).")
@click.option("--split", default=None,
              help="Dataset split of the --data folders (default: the evaluation split).")
@dataset_kind_options
@click.option("--size", default=None, help="Resize every image to HxW (default: own size).")
@click.option("--rule", default="alpha1beta0", show_default=True,
              help="The LRP rule the page starts with.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; anything but 127.0.0.1 makes the page reachable "
                   "from other machines.")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True,
              help="Port (0: any free port).")
@click.option("--max-upload", type=click.IntRange(min=1), default=20, show_default=True,
              help="Largest picture upload, in MB.")
@device_option
@click.option("--quiet", "-q", is_flag=True, help="Only print the address.")
def explore(checkpoint, data, diagnosis, split, data_kind, id_map, size, rule, host, port,
            max_upload, device, quiet) -> None:
    """Start a local web page that explains the model's decisions on your images.

    \b
    Click a pixel, brush a mask or pick the true/false positives of a class, choose
    LRP (any rule or per-layer composite), Grad-CAM, sensitivity, gradient x input or
    guided backprop, and see the heatmap, the layer-by-layer relevance, feature values
    and their separated maps, the switch-off curve and the share absorbed by the biases;
    compare two images. Ctrl-C stops the server.

    \b
    Example:
      segscope explore -c model.safetensors --data camvid/ --data synthetic:8
    """
    import importlib.util

    from ..errors import SegscopeError

    missing = [m for m in ("starlette", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise SegscopeError(INSTALL_HINT)

    import socket

    from ..checkpoint import load_model
    from ..device import resolve_device
    from ..explore import Catalog, Explorer, serve

    dev = resolve_device(device)
    hw = parse_size(size, MAX_SIDE) if size else None
    port = _free_port(host, port, socket)
    model, _ = load_model(checkpoint, map_location=dev)
    catalog = Catalog(data, diagnosis, size=hw, kind=data_kind, id_map=id_map,
                      max_upload=max_upload * 1024 * 1024, split=split)
    explorer = Explorer(model, catalog, rule=rule)
    explorer.check_rule(rule)
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"segscope explore: http://{shown}:{port}/  ({len(catalog.items)} images; "
               "Ctrl-C stops)")
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"note: listening on {host}: other machines can open this page", err=True)
    for note in catalog.notes:
        click.echo(f"note: {note}", err=True)
    try:
        serve(explorer, host=host, port=port, quiet=quiet)
    finally:
        catalog.close()


def _free_port(host: str, port: int, socket) -> int:
    """``port`` if it can be bound on ``host`` (a free one for 0); a clear error if not."""
    from ..errors import SegscopeError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            # a name that does not resolve (gaierror) is the host's fault, not the port's
            fix = "choose another --host" if isinstance(exc, socket.gaierror) \
                else "choose another --port"
            raise SegscopeError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); "
                                f"{fix}") from None
        return s.getsockname()[1]
