"""``diskci composefs``: build composefs images (mkcomposefs 1.0.x compatible) from a directory, a tarball
or a dump (composefs-dump(5)), and dump an image back to that format."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import typer

from diskci.cli.output import print_json, stdout
from diskci.errors import UsageError
from diskci.formats import composefs, composefs_dump, composefs_reader

composefs_app = typer.Typer(
    help="composefs images: metadata-only EROFS + object store.", no_args_is_help=True
)


@composefs_app.command("build")
def build(
    source: Path = typer.Argument(
        ...,
        help="A directory, or an uncompressed tarball (read without extracting); with --from-file a dump, "
        "or - for standard input.",
    ),
    image: Path = typer.Argument(..., help="The composefs image to write."),
    digest_store: Path | None = typer.Option(
        None, "--digest-store", help="Copy each file larger than 64 bytes to PATH/XX/<rest of digest>."
    ),
    print_digest: bool = typer.Option(False, "--print-digest", help="Print the image's fs-verity digest."),
    use_epoch: bool = typer.Option(False, "--use-epoch", help="Make every mtime zero."),
    min_version: int | None = typer.Option(
        None, "--min-version", min=0, max=composefs.VERSION_MAX, help="Lowest format version (default 0)."
    ),
    max_version: int | None = typer.Option(
        None, "--max-version", min=0, max=composefs.VERSION_MAX, help="Highest format version (default 1)."
    ),
    workers: int | None = typer.Option(
        None, "--workers", min=0, help="Hashing processes (default: one per CPU; 0: none, all in this one)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the result (digest, size, objects) as JSON."),
    from_file: bool = typer.Option(
        False,
        "--from-file",
        help="SOURCE is a composefs dump (composefs-dump(5)), as mkcomposefs --from-file.",
    ),
    strict: bool = typer.Option(
        False,
        "--strict",
        help=f"With --from-file, parse strictly (as mkcomposefs with {composefs_dump.STRICT_ENV} set, "
        "which also turns this on).",
    ),
) -> None:
    """Write IMAGE from SOURCE with mkcomposefs' semantics; the same inputs give the same bytes.

    Like mkcomposefs, giving either version flag makes the other default to 0, and a directory's
    hardlinks become separate inodes (a tarball's stay one inode).

    Example: [bold]diskci composefs build rootfs.tar rootfs.cfs --digest-store objects --print-digest[/]
    """
    if min_version is None and max_version is None:
        lo, hi = composefs.DEFAULT_MIN_VERSION, composefs.DEFAULT_MAX_VERSION
    else:
        lo, hi = min_version or 0, max_version or 0
    if from_file:
        if digest_store is not None:
            raise UsageError(
                "--digest-store needs file contents, and a dump has none (only their digests)",
                hint="fill the object store from the files themselves (build SOURCE-DIRECTORY IMAGE)",
            )
        if use_epoch:  # mkcomposefs 1.0.8 --from-file ignores it too; the image stays the same
            print("warning: --use-epoch has no effect with --from-file (set MTIME to 0.0 in the dump)",
                  file=sys.stderr)  # fmt: skip
        described = composefs_dump.read(str(source), strict=strict or composefs_dump.strict_from_env())
        result = composefs.build_described(described, image, min_version=lo, max_version=hi)
    elif strict:
        raise UsageError("--strict is about parsing a dump: give --from-file too")
    else:
        result = composefs.build(
            source,
            image,
            digest_store=digest_store,
            use_epoch=use_epoch,
            min_version=lo,
            max_version=hi,
            workers=workers,
        )
    if json_out:
        print_json(dataclasses.asdict(result) | {"image": str(image)})
    elif print_digest:
        print(result.digest, flush=True)
    else:
        stdout.print(f"{image}: {result.size} bytes, {result.inodes} inodes, {result.objects} objects")


@composefs_app.command("dump")
def dump(image: Path = typer.Argument(..., help="A composefs image (diskci's or mkcomposefs's).")) -> None:
    """Print what IMAGE holds in the dump format (composefs-dump(5)), as composefs-info dump does.

    Piped into [bold]build --from-file -[/] it writes the same image again (give the same --min-version and
    --max-version when the image was built with them).

    Example: [bold]diskci composefs dump rootfs.cfs | diskci composefs build --from-file - copy.cfs[/]
    """
    described = composefs_reader.read_file(image)
    out = sys.stdout.buffer
    composefs_dump.write(described, out)
    out.flush()


def register(app: typer.Typer) -> None:
    app.add_typer(composefs_app, name="composefs")
