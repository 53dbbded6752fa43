"""Canonical JSON, pinned byte for byte: spec digests, cache keys and OCI manifest digests depend on it."""

from __future__ import annotations

import hashlib

from diskci.canonical import canonical_json


def test_sorted_keys_no_whitespace_at_every_level() -> None:
    doc = {"b": [1, {"z": None, "a": True}], "a": {"y": "x", "B": 2.5}}
    assert canonical_json(doc) == b'{"a":{"B":2.5,"y":"x"},"b":[1,{"a":true,"z":null}]}'


def test_numbers_keep_python_forms() -> None:
    assert canonical_json([3.0, 0.1, 1e21, 1e-7, -0.0, 2**70]) == (
        b"[3.0,0.1,1e+21,1e-07,-0.0,1180591620717411303424]"
    )


def test_non_ascii_is_utf8_unless_ascii_only() -> None:
    doc = {"name": "naïve ☃ 𝄞", "ctl": 'tab\t"q"\\'}
    assert canonical_json(doc) == '{"ctl":"tab\\t\\"q\\"\\\\","name":"naïve ☃ 𝄞"}'.encode()
    assert canonical_json(doc, ascii_only=True) == (
        b'{"ctl":"tab\\t\\"q\\"\\\\","name":"na\\u00efve \\u2603 \\ud834\\udd1e"}'
    )


def test_ascii_data_is_the_same_either_way() -> None:
    doc = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []}
    assert canonical_json(doc) == canonical_json(doc, ascii_only=True)
    assert hashlib.sha256(canonical_json(doc)).hexdigest() == (
        "93e16ab8fb1bfb08f051a420835b414851eaeedb9f7105d26dacb84f26d810b5"
    )
