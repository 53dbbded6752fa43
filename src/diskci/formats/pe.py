"""PE/COFF images, as far as a unified kernel image (UKI) needs: read sections, add or replace them.

A UKI is the systemd stub (a PE image) with data sections added (``.osrel``, ``.cmdline``, ``.linux``,
``.initrd``; https://uapi-group.org/specifications/specs/unified_kernel_image/). objcopy could add them
for x86-64 only (Debian's binutils has no ``pei-aarch64`` target), so this module does it for both:

- new section headers go into the room the stub leaves between its last header and ``SizeOfHeaders``;
- each new section starts at the next 4 KiB-aligned virtual address after the image (a multiple of any
  ``SectionAlignment`` up to 4 KiB) and at the next ``FileAlignment`` offset after the file's data, its
  raw data zero-padded to ``FileAlignment``; the stub's trailing COFF symbol table is dropped;
- ``SizeOfImage``, ``SizeOfInitializedData`` and the image ``CheckSum`` are recomputed.

The same inputs give the same bytes (no time stamp is written). A signed image (a certificate table in
data directory 4) is refused: a changed image needs a new signature, which is the signer's business.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from diskci.errors import FormatError

PE32 = 0x10B
PE32_PLUS = 0x20B
MACHINES = {0x8664: "x64", 0xAA64: "aa64"}
DATA_SECTION = 0x40000040  # IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ
SECTION_HEADER = 40
PAGE = 4096
_SECURITY_DIRECTORY = 4


def _align(n: int, unit: int) -> int:
    return -(-n // unit) * unit


@dataclass(frozen=True)
class Section:
    name: str
    virtual_address: int
    virtual_size: int
    raw_offset: int
    raw_size: int
    characteristics: int


@dataclass(frozen=True)
class PeImage:
    """The parsed headers of one PE image (``data`` is the whole file)."""

    data: bytes
    coff: int  # offset of the COFF file header (after "PE\\0\\0")
    optional: int  # offset of the optional header
    magic: int
    sections: tuple[Section, ...]

    @classmethod
    def parse(cls, data: bytes) -> PeImage:
        if len(data) < 0x40 or data[:2] != b"MZ":
            raise FormatError("not a PE image (no MZ header)")
        (pe,) = struct.unpack_from("<I", data, 0x3C)
        if data[pe : pe + 4] != b"PE\0\0":
            raise FormatError("not a PE image (no PE signature)")
        coff = pe + 4
        _machine, count, _ts, _symtab, _nsyms, opt_size, _chars = struct.unpack_from("<HHIIIHH", data, coff)
        optional = coff + 20
        (magic,) = struct.unpack_from("<H", data, optional)
        if magic not in (PE32, PE32_PLUS):
            raise FormatError(f"PE optional header magic {magic:#x} is neither PE32 nor PE32+")
        table = optional + opt_size
        sections = []
        for i in range(count):
            raw = data[table + i * SECTION_HEADER : table + (i + 1) * SECTION_HEADER]
            name, vsize, va, rsize, roff, _rel, _ln, _nrel, _nln, chars = struct.unpack("<8sIIIIIIHHI", raw)
            sections.append(
                Section(name.rstrip(b"\0").decode("ascii", "replace"), va, vsize, roff, rsize, chars)
            )
        return cls(data, coff, optional, magic, tuple(sections))

    @property
    def machine(self) -> int:
        return int(struct.unpack_from("<H", self.data, self.coff)[0])

    @property
    def section_table(self) -> int:
        (opt_size,) = struct.unpack_from("<H", self.data, self.coff + 16)
        return self.optional + opt_size

    def _field(self, offset: int, fmt: str = "<I") -> int:
        return int(struct.unpack_from(fmt, self.data, self.optional + offset)[0])

    @property
    def section_alignment(self) -> int:
        return self._field(32)

    @property
    def file_alignment(self) -> int:
        return self._field(36)

    @property
    def size_of_headers(self) -> int:
        return self._field(60)

    @property
    def _directories(self) -> int:
        return self.optional + (112 if self.magic == PE32_PLUS else 96)

    def directory(self, index: int) -> tuple[int, int]:
        """(address, size) of data directory ``index`` ((0, 0) when the header has none)."""
        count = self._field(108 if self.magic == PE32_PLUS else 92)
        if index >= count:
            return 0, 0
        address, size = struct.unpack_from("<II", self.data, self._directories + 8 * index)
        return int(address), int(size)

    @property
    def signed(self) -> bool:
        return self.directory(_SECURITY_DIRECTORY)[1] != 0

    def section(self, name: str) -> Section | None:
        return next((s for s in self.sections if s.name == name), None)

    def section_data(self, name: str) -> bytes:
        """The contents of section ``name`` (its virtual size, as a loader sees it)."""
        s = self.section(name)
        if s is None:
            raise FormatError(f"the PE image has no {name} section")
        return self.data[s.raw_offset : s.raw_offset + min(s.virtual_size, s.raw_size)]


def checksum(data: bytes | bytearray, checksum_offset: int) -> int:
    """The PE image checksum (imagehlp's CheckSumMappedFile) with the field at ``checksum_offset`` as 0."""
    buf = bytearray(data)
    buf[checksum_offset : checksum_offset + 4] = b"\0\0\0\0"
    if len(buf) % 2:
        buf.append(0)
    total = sum(memoryview(bytes(buf)).cast("H"))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return (total + len(data)) & 0xFFFFFFFF


def add_sections(data: bytes, sections: Sequence[tuple[str, bytes]]) -> bytes:
    """``data`` (an unsigned PE image) with ``sections`` (name, contents) appended, in that order."""
    image = PeImage.parse(data)
    if image.signed:
        raise FormatError("the PE image is signed: sections can only be added to an unsigned image")
    for name, _ in sections:
        if not name.startswith(".") or len(name.encode()) > 8:
            raise FormatError(f"PE section name {name!r}: a dot and at most 7 more characters")
        if image.section(name) is not None:
            raise FormatError(f"the PE image already has a {name} section")
    table = image.section_table
    headers_end = table + SECTION_HEADER * (len(image.sections) + len(sections))
    if headers_end > image.size_of_headers or headers_end > min(
        (s.raw_offset for s in image.sections if s.raw_size), default=image.size_of_headers
    ):
        raise FormatError(
            f"no room for {len(sections)} more section headers in the PE image's "
            f"{image.size_of_headers}-byte headers"
        )
    file_align = image.file_alignment or 512
    section_align = max(image.section_alignment or PAGE, PAGE)
    raw_end = max((s.raw_offset + s.raw_size for s in image.sections), default=image.size_of_headers)
    out = bytearray(data[:raw_end])  # the stub's trailing COFF symbol table (if any) is dropped
    out += b"\0" * (_align(len(out), file_align) - len(out))
    va = _align(max(s.virtual_address + s.virtual_size for s in image.sections), section_align)
    headers = bytearray()
    added_raw = 0
    for name, content in sections:
        raw_size = _align(len(content), file_align)
        headers += struct.pack(
            "<8sIIIIIIHHI", name.encode(), len(content), va, raw_size, len(out), 0, 0, 0, 0, DATA_SECTION
        )
        out += content + b"\0" * (raw_size - len(content))
        added_raw += raw_size
        va = _align(va + len(content), section_align)
    start = table + SECTION_HEADER * len(image.sections)
    out[start : start + len(headers)] = headers
    # COFF header: section count; no symbol table any more
    struct.pack_into("<H", out, image.coff + 2, len(image.sections) + len(sections))
    struct.pack_into("<II", out, image.coff + 8, 0, 0)
    # optional header: SizeOfInitializedData, SizeOfImage, CheckSum
    opt = image.optional
    (initialized,) = struct.unpack_from("<I", out, opt + 8)
    struct.pack_into("<I", out, opt + 8, (initialized + added_raw) & 0xFFFFFFFF)
    struct.pack_into("<I", out, opt + 56, _align(va, image.section_alignment or PAGE))
    struct.pack_into("<I", out, opt + 64, checksum(out, opt + 64))
    return bytes(out)


def replace_last_section(data: bytes, name: str, content: bytes) -> bytes:
    """``data`` with its last section, which must be ``name``, holding ``content`` instead (how the
    platform rewrites a UKI's ``.cmdline`` before it signs it)."""
    image = PeImage.parse(data)
    if image.signed:
        raise FormatError("the PE image is signed: its sections cannot be changed")
    if not image.sections or image.sections[-1].name != name:
        found = image.sections[-1].name if image.sections else "none"
        raise FormatError(f"the PE image's last section is {found}, not {name}")
    last = image.sections[-1]
    if last.raw_offset + last.raw_size != len(data) or any(
        s.raw_offset + s.raw_size > last.raw_offset for s in image.sections[:-1]
    ):
        raise FormatError(f"the {name} section's data is not at the end of the PE image")
    out = bytearray(data[: last.raw_offset])
    start = image.section_table + SECTION_HEADER * (len(image.sections) - 1)
    out[start : start + SECTION_HEADER] = b"\0" * SECTION_HEADER
    struct.pack_into("<H", out, image.coff + 2, len(image.sections) - 1)
    opt = image.optional
    (initialized,) = struct.unpack_from("<I", out, opt + 8)
    struct.pack_into("<I", out, opt + 8, (initialized - last.raw_size) & 0xFFFFFFFF)
    return add_sections(bytes(out), [(name, content)])
