"""``diskci composefs``: build composefs images (mkcomposefs 1.0.x compatible) from a directory, a tarball
or a dump (composefs-dump(5)), dump an image back to that format, and diff two images."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import typer
from rich.markup import escape

from diskci.cli.output import print_json, stdout
from diskci.errors import UsageError
from diskci.formats import composefs, composefs_diff, composefs_dump, composefs_reader

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


_MARKS = {"added": ("+", "green"), "removed": ("-", "red"), "changed": ("~", "yellow")}


@composefs_app.command("diff")
def diff(
    old: Path = typer.Argument(..., help="The composefs image before."),
    new: Path = typer.Argument(..., help="The composefs image after."),
    json_out: bool = typer.Option(False, "--json", help="Print counts and every change as JSON."),
    under: str | None = typer.Option(None, "--under", help="Only paths at or below this one (e.g. /etc)."),
    exit_code: bool = typer.Option(
        False, "--exit-code", help="Exit with 1 when the images differ (as git diff --exit-code)."
    ),
) -> None:
    """Show the paths added, removed and changed from OLD to NEW: file type, mode, owner, size, content
    (fs-verity digest, or the hash of an inline file), symlink target, device number, xattrs.

    Modification times, link counts and directory sizes are not compared. The exit status is 0 whether
    or not they differ, unless --exit-code is given.

    Example: [bold]diskci composefs diff old/rootfs.cfs new/rootfs.cfs --under /usr/bin[/]
    """
    result = composefs_diff.diff(
        composefs_diff.read_listing(old), composefs_diff.read_listing(new), under=under
    )
    if json_out:
        print_json(result.to_json())
    else:
        for change in result.changes:
            mark, colour = _MARKS[change.change]
            what = escape(composefs_diff.describe_change(change))
            stdout.print(f"[{colour}]{mark}[/] {escape(change.path)}  [dim]{what}[/]", soft_wrap=True)
        counts = result.counts
        stdout.print(
            f"{counts['added']} added, {counts['removed']} removed, {counts['changed']} changed, "
            f"{counts['unchanged']} unchanged"
        )
    if exit_code and result:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(composefs_app, name="composefs")
