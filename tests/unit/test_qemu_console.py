"""``QemuConsole`` reads a console line by line; asked to, it matches the line being written before its
newline (firmware prints ``>>Start PXE over IPv4.`` and then nothing until its DHCP gives up), and by
default only whole lines, so a line read is all of it; a pattern that
never comes, or a machine that exits first, is a ``BootTimeout`` holding the console's tail. A small
Python program stands in for QEMU here: the reading is what is tested, not QEMU."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from diskci.qemu import BootTimeout, QemuConsole

FIRMWARE = r"""
import sys, time
out = sys.stdout.buffer
out.write(b"BdsDxe: loading Boot0001\r\nBdsDxe: failed to load Boot0001: Not Found\r\n>>Start PXE over IPv4.")
out.flush()
time.sleep(float(sys.argv[1]))
out.write(b"\r\n  PXE-E16: No valid offer received.\r\nlast words without a newline")
out.flush()
"""


def console(tmp_path: Path, quiet_for: float) -> QemuConsole:
    return QemuConsole([sys.executable, "-c", FIRMWARE, str(quiet_for)], log_path=tmp_path / "console.log")


def test_the_line_being_written_matches_before_its_newline(tmp_path: Path) -> None:
    with console(tmp_path, quiet_for=60) as vm:
        with pytest.raises(BootTimeout, match="no match within 2s"):
            vm.wait_for(r"Start PXE over IPv4", timeout=2)  # a whole line: it has not ended yet
        assert vm.wait_for(r"Start PXE over IPv4", timeout=20, unfinished=True) == ">>Start PXE over IPv4."
        assert vm.wait_for(r"failed to load", timeout=1) == "BdsDxe: failed to load Boot0001: Not Found"
        assert vm.saw(r"Start PXE") and not vm.saw(r"PXE-E16")
        assert vm.tail(1) == ">>Start PXE over IPv4."
    log = (tmp_path / "console.log").read_text()
    assert log.splitlines()[:2] == ["BdsDxe: loading Boot0001", "BdsDxe: failed to load Boot0001: Not Found"]


def test_whole_lines_and_the_last_one_at_exit(tmp_path: Path) -> None:
    with console(tmp_path, quiet_for=0) as vm:
        assert vm.wait_for(r"PXE-E16", timeout=20) == "  PXE-E16: No valid offer received."
        with pytest.raises(BootTimeout, match="QEMU exited waiting for /diskci: booted/") as caught:
            vm.wait_for(r"diskci: booted", timeout=20)
        assert caught.value.tail.splitlines()[-1] == "last words without a newline"
        assert vm.lines[-1] == "last words without a newline" and vm.partial == ""
    assert (tmp_path / "console.log").read_text().endswith("last words without a newline\n")


def test_a_line_that_does_not_come_in_time(tmp_path: Path) -> None:
    with console(tmp_path, quiet_for=60) as vm:
        with pytest.raises(BootTimeout, match=r"no match within 1s waiting for /diskci: booted/") as caught:
            vm.wait_for(r"diskci: booted", timeout=1)
        assert caught.value.tail.endswith("failed to load Boot0001: Not Found\n>>Start PXE over IPv4.")
