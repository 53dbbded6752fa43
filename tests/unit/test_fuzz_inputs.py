"""Bounded Hypothesis fuzzing of three parsers of outside input: each answers with a valid result or a
diskci error (a ``DiskciError`` subclass), never with any other exception.

- the webhook receiver's body and header parsing (``platform.http.webhooks``, ``platform.http.jsonbody``),
- the platform spec loader (``diskci.spec.load_spec``) on arbitrary text and YAML,
- the tar reader (``diskci.formats.fstree.from_tar``) on arbitrary bytes and on damaged tarballs.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diskci.errors import DiskciError
from diskci.formats.fstree import from_tar
from diskci.platform.http import webhooks
from diskci.platform.http.jsonbody import parse_json, parse_json_object
from diskci.spec import load_spec

FUZZ = settings(
    max_examples=150,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def only_diskci_errors(call: Callable[[], Any]) -> Any:
    """``call()``'s result, or None when it raised a diskci error; any other exception fails the test."""
    try:
        return call()
    except DiskciError:
        return None


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="diskci-fuzz-") as name:
        yield Path(name)


# --- webhook body and headers ----------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


json_bodies = st.one_of(
    st.binary(max_size=512),
    json_values.map(_json_bytes),
    st.integers(min_value=1, max_value=3000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(min_value=1, max_value=3000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    st.text(alphabet="0123456789-", min_size=1, max_size=6000).map(str.encode),
    st.sampled_from([b'"\\ud800"', b'{"\\udfff": 1}', b"NaN", b"1e999", b"-Infinity", b"\xef\xbb\xbf{}"]),
)


@FUZZ
@given(body=json_bodies)
def test_webhook_body_parsing_raises_only_diskci_errors(body: bytes) -> None:
    data = only_diskci_errors(lambda: webhooks._parse(body))
    if data is not None:
        assert isinstance(data, dict) and isinstance(data["node_platform"], str)
    only_diskci_errors(lambda: parse_json(body, what="body"))
    only_diskci_errors(lambda: parse_json_object(body, what="body"))


header_values = st.one_of(st.none(), st.text(max_size=120), st.sampled_from(["v1,", "v1," + "A" * 43 + "="]))


@FUZZ
@given(delivery=header_values, timestamp=header_values, signature=header_values)
def test_webhook_header_parsing_raises_only_diskci_errors(
    delivery: str | None, timestamp: str | None, signature: str | None
) -> None:
    headers = {
        k: v
        for k, v in [
            (webhooks.DELIVERY_HEADER, delivery),
            (webhooks.TIMESTAMP_HEADER, timestamp),
            (webhooks.SIGNATURE_HEADER, signature),
        ]
        if v is not None
    }
    only_diskci_errors(lambda: webhooks._delivery_id(headers))
    only_diskci_errors(lambda: webhooks._check_timestamp(headers, 300, 1_700_000_000.0))
    only_diskci_errors(lambda: webhooks._signatures(headers))


# --- the spec loader ----------------------------------------------------------------------------------------

SPEC_KEYS = ["name", "distribution", "suite", "architecture", "packages", "mirror", "users", "boot", "image"]
yaml_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=20),
    st.dates(),
    st.datetimes(),
    st.binary(max_size=8),
)
yaml_values = st.recursive(
    yaml_scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(SPEC_KEYS) | st.text(max_size=8) | st.integers() | st.dates(), inner
        )
    ),
    max_leaves=20,
)


def _yaml_text(value: Any) -> bytes:
    return yaml.safe_dump(value, allow_unicode=True).encode("utf-8", "surrogatepass")


spec_texts = st.one_of(
    st.binary(max_size=400),
    st.text(max_size=400).map(lambda t: t.encode("utf-8", "surrogatepass")),
    yaml_values.map(_yaml_text),
    st.dictionaries(st.sampled_from(SPEC_KEYS), yaml_values, max_size=6).map(_yaml_text),
    st.integers(min_value=1, max_value=3000).map(lambda n: b"[" * n + b"]" * n),
    st.sampled_from([b"? [a, b]\n: c\n", b"a: &x [*x]\n", b"!!python/object:os.system {}\n", b"{1: 2}"]),
)


@FUZZ
@given(text=spec_texts)
def test_spec_loader_raises_only_diskci_errors(scratch: Path, text: bytes) -> None:
    path = scratch / "spec.yaml"
    path.write_bytes(text)
    only_diskci_errors(lambda: load_spec(path))


# --- the tar reader -------------------------------------------------------------------------------------

entry_names = st.one_of(
    st.text(alphabet="ab./", min_size=1, max_size=12),
    st.sampled_from(["..", "/abs", "a/../b", "x" * 300, ".", "./", "a//b"]),
)
pax_headers = st.dictionaries(
    st.sampled_from(["mtime", "LIBARCHIVE.xattr.user.a", "SCHILY.xattr.user.b", "path", "linkpath", "size"]),
    st.text(max_size=16) | st.text(alphabet="AZaz09+/=.-", max_size=9),
    max_size=3,
)
entries = st.lists(
    st.tuples(
        entry_names,
        st.sampled_from(
            [t[0] for t in (tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE)]
            + [tarfile.CHRTYPE[0]]
        ),
        entry_names,
        st.binary(max_size=64),
        pax_headers,
        st.integers(min_value=0, max_value=0o7777777) | st.integers(min_value=0, max_value=2**48),
    ),
    max_size=5,
)
Member = tuple[str, int, str, bytes, dict[str, str], int]


def _tarball(members: list[Member], tar_format: int = tarfile.PAX_FORMAT) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tar_format) as tf:
        for name, kind, link, data, pax, number in members:
            info = tarfile.TarInfo(name)
            info.type = bytes([kind]) if isinstance(kind, int) else kind
            info.linkname = link
            info.mtime = number
            info.devmajor = info.devminor = number
            info.pax_headers = dict(pax)
            try:
                if kind == tarfile.REGTYPE:
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
                else:
                    tf.addfile(info)
            except (ValueError, tarfile.HeaderError):
                continue  # tarfile would not write it; others do
    return out.getvalue()


def _damaged(blob: bytes, cuts: list[tuple[int, int]], end: int | None) -> bytes:
    data = bytearray(blob)
    for at, value in cuts:
        if data:
            data[at % len(data)] = value
    return bytes(data[:end] if end is not None else data)


tarballs = st.one_of(
    st.binary(max_size=2048),
    st.builds(_tarball, entries, st.sampled_from([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])),
    st.builds(
        _damaged,
        entries.map(_tarball),
        st.lists(st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=255)), max_size=6),
        st.none() | st.integers(min_value=0, max_value=8192),
    ),
)


@FUZZ
@given(blob=tarballs)
def test_tar_reader_raises_only_diskci_errors(scratch: Path, blob: bytes) -> None:
    path = scratch / "fuzz.tar"
    path.write_bytes(blob)
    root = only_diskci_errors(lambda: from_tar(path))
    if root is not None:
        assert root.is_dir
    os.unlink(path)


# --- what the fuzzing found (each was an exception other than a diskci error) ------------------------------


@pytest.mark.parametrize(
    "text",
    [b"\x80name: x\n", b"2001-01-01: x\n", b"name: 0000-01-01\n", b"a: &x [*x]\n"],
    ids=["not-utf8", "date-key", "year-0", "cycle"],
)
def test_spec_loader_refuses_odd_yaml_with_a_spec_error(scratch: Path, text: bytes) -> None:
    from diskci.errors import SpecError

    path = scratch / "odd.yaml"
    path.write_bytes(text)
    with pytest.raises(SpecError):
        load_spec(path)


@pytest.mark.parametrize(
    "member",
    [
        (("a", tarfile.REGTYPE[0], "", b"", {"LIBARCHIVE.xattr.user.a": "abcde"}, 0), tarfile.PAX_FORMAT),
        (("a", tarfile.REGTYPE[0], "", b"", {"LIBARCHIVE.xattr.user.a": "\x80"}, 0), tarfile.PAX_FORMAT),
        (("c", tarfile.CHRTYPE[0], "", b"", {}, 2**40), tarfile.GNU_FORMAT),
    ],
    ids=["bad-base64-xattr", "non-ascii-xattr", "huge-device-number"],
)
def test_tar_reader_refuses_odd_headers_with_a_format_error(
    scratch: Path, member: tuple[Member, int]
) -> None:
    from diskci.formats.fstree import TreeFormatError

    path = scratch / "odd.tar"
    path.write_bytes(_tarball([member[0]], member[1]))
    with pytest.raises(TreeFormatError):
        from_tar(path)
