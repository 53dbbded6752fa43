"""Benchmark: diskci's fs-verity digest against Debian's ``fsverity digest`` on the same 1 GiB file.

Both run in the same process run, alternately, three times each on a page-cached file; the best time of
each counts. Reports the library call and the ``diskci fsverity digest`` CLI (which adds start-up time).
Goal: library / tool <= 1.3. Usage: ``python bench/fsverity.py [--size-mib N] [--file PATH]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from diskci.formats.fsverity import digest_file

GOAL = 1.3


def timed(fn: object) -> tuple[float, str]:
    start = time.perf_counter()
    out = fn()  # type: ignore[operator]
    return time.perf_counter() - start, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--file", type=Path, help="use this file instead of a new random one")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    tool = shutil.which("fsverity")
    if tool is None:
        print("fsverity (Debian package 'fsverity') is not installed", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-fsverity-", dir="/var/tmp") as tmp:
        path = args.file
        if path is None:
            path = Path(tmp) / "data.bin"
            with open(path, "wb") as f:
                for _ in range(args.size_mib):
                    f.write(os.urandom(1 << 20))
        size = path.stat().st_size
        subprocess.run([tool, "digest", str(path)], capture_output=True, check=True)  # warm the page cache
        cli = [sys.executable, "-m", "diskci.cli.main", "fsverity", "digest", str(path)]
        tool_t, ours_t, cli_t = [], [], []
        for _ in range(args.rounds):
            t, ref = timed(
                lambda: subprocess.run([tool, "digest", str(path)], capture_output=True, text=True).stdout
            )
            tool_t.append(t)
            t, mine = timed(lambda: f"sha256:{digest_file(path).hex()} {path}\n")
            ours_t.append(t)
            t, via_cli = timed(lambda: subprocess.run(cli, capture_output=True, text=True).stdout)
            cli_t.append(t)
            if not (ref == mine == via_cli):
                print(f"MISMATCH: tool {ref!r} ours {mine!r} cli {via_cli!r}", file=sys.stderr)
                return 1
    best_tool, best_ours, best_cli = min(tool_t), min(ours_t), min(cli_t)
    ratio = best_ours / best_tool
    print(f"file: {size / (1 << 20):.0f} MiB, {args.rounds} rounds, best of each")
    print(f"fsverity digest (C):        {best_tool:6.2f} s  {size / best_tool / 1e6:7.0f} MB/s")
    print(f"diskci digest_file():       {best_ours:6.2f} s  {size / best_ours / 1e6:7.0f} MB/s")
    print(f"diskci fsverity digest CLI: {best_cli:6.2f} s  (includes Python start-up)")
    print(f"ratio library/tool: {ratio:.2f} (goal <= {GOAL}); ratio CLI/tool: {best_cli / best_tool:.2f}")
    return 0 if ratio <= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
