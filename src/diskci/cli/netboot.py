"""``diskci netboot``: try a build's netboot artifacts by hand."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from diskci.cli.output import print_json, stdout
from diskci.image.artifacts.ipxe_server import make_server, netboot_targets

netboot_app = typer.Typer(help="Netboot a build directory by hand.", no_args_is_help=True)


@netboot_app.command("serve")
def serve(
    build_dir: Path = typer.Argument(..., help="A build directory (with build.json and <arch>/boot.ipxe)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port to listen on (0: any free port)."),
    json_out: bool = typer.Option(False, "--json", help="Print the boot script URLs as JSON, then serve."),
) -> None:
    """Serve BUILD_DIR over HTTP so machines (or QEMU) can netboot it from its boot.ipxe.

    QEMU reaches the host's 127.0.0.1 as 10.0.2.2: qemu-system-x86_64 -accel tcg -m 1024 -boot n
    -netdev user,id=n0,bootfile=http://10.0.2.2:8000/amd64/boot.ipxe -device virtio-net-pci,netdev=n0
    -nographic

    Example: [bold]diskci netboot serve out/debian-12-amd64 --port 8000[/]
    """
    targets = netboot_targets(build_dir)
    server = make_server(build_dir, host, port)
    bound = server.server_address[1]
    urls = {t.arch: f"http://{host}:{bound}/{t.script}" for t in targets}
    if json_out:
        print_json({"build_dir": str(build_dir), "host": host, "port": bound, "boot_scripts": urls})
    else:
        for arch, url in urls.items():
            stdout.print(f"{arch}: {url}")
        stdout.print("serving; Ctrl-C stops")
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def register(app: typer.Typer) -> None:
    app.add_typer(netboot_app, name="netboot")
