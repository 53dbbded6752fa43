"""Canonical JSON: the one byte form diskci takes digests over (OCI manifests, cache keys, spec digest).

The form is ``json.dumps(obj, sort_keys=True, separators=(",", ":"))`` encoded as UTF-8: object keys
sorted by code point at every level, no whitespace, Python's number forms (``3.0`` stays ``3.0``, floats
by ``repr``, integers of any size exactly), and NaN/Infinity written as ``NaN``/``Infinity``. It is not
RFC 8785 (JCS), which sorts keys by UTF-16 code units and writes numbers the ECMAScript way; the
transparency log and DSSE envelopes use ``rfc8785`` itself. Changing a single byte here changes
published digests, so the form is fixed.
"""

from __future__ import annotations

import json
from typing import Any


def canonical_json(obj: Any, *, ascii_only: bool = False) -> bytes:
    """``obj`` as canonical JSON bytes (sorted keys, ``,`` and ``:`` separators, no whitespace, UTF-8).

    Non-ASCII characters are written as themselves (UTF-8), except with ``ascii_only``, which writes
    every non-ASCII character as a ``\\uXXXX`` escape (surrogate pairs beyond the BMP): the form the
    platform spec's digest has always been taken over. Both forms are the same bytes for ASCII data.
    """
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=ascii_only).encode()
