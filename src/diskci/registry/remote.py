"""``RegistryClient`` for an OCI distribution registry, over oras-py's ``Registry`` (session, auth).

oras-py's high-level push serializes manifests itself and has no artifactType or index support, so
this client sends exact bytes through ``Registry.do_request`` (which carries oras' auth handling) and
checks ``Docker-Content-Digest`` on every manifest it sends or reads. Connection errors, and the
answers a concurrent push of the same blob gives for a moment, are retried a few times with back-off;
HTTP errors are turned into ``RegistryError`` with the registry's message.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import oras.container
import oras.provider
import requests

from diskci import mediatypes as mt
from diskci.errors import RegistryError, VerificationFailed
from diskci.registry.reference import Reference
from diskci.registry.store import (
    MANIFEST_TYPES,
    BlobBody,
    BlobSource,
    Descriptor,
    check_digest,
    download_verified,
    fallback_tag,
    referrer_descriptor,
    referrers_index,
    retrying,
    sha256_digest,
)

log = logging.getLogger("diskci.registry")
_ACCEPT = ", ".join(MANIFEST_TYPES)
_ATTEMPTS = 4  # a request sent again after a connection error or an unsettled answer: at most this often


class RemoteRegistry:
    """One repository of a remote registry."""

    def __init__(self, reference: Reference, *, insecure: bool = False) -> None:
        self.reference = reference
        self._oras = oras.provider.Registry(hostname=reference.host, insecure=insecure)
        self._container = oras.container.Container(reference.repository, registry=reference.host)
        self._base = f"{self._oras.prefix}://{reference.host}/v2/{reference.repository}"
        self._has_referrers_api: bool | None = None

    # --- transport -----------------------------------------------------------------------------
    def _send(self, method: str, url: str, **kw: Any) -> requests.Response:
        """One request through oras' auth handling (``do_request.__wrapped__``: without its slow
        catch-all retry loop)."""
        if not url.startswith("http"):
            url = self._base + url
        headers = dict(kw.pop("headers", None) or {})
        resp: requests.Response = oras.provider.Registry.do_request.__wrapped__(
            self._oras, url, method, headers=headers, **kw
        )
        return resp

    def _request(
        self,
        method: str,
        url: str,
        *,
        again_if: Callable[[requests.Response], bool] | None = None,
        **kw: Any,
    ) -> requests.Response:
        """``_send``, again with back-off after a connection error or an answer ``again_if`` holds
        not settled yet (a stream is sent once); the last answer when every attempt was unsettled.

        ``again_if`` is for docker-registry's filesystem store, which rewrites a blob's repository link
        in place: while another pusher links the same blob (two architectures share a layer) a HEAD of
        it can fail (500) and a manifest naming it be refused (MANIFEST_BLOB_UNKNOWN) for a moment."""
        attempts = 1 if isinstance(kw.get("data"), BlobBody) else _ATTEMPTS
        last: Exception | None = None
        for attempt in retrying(attempts=attempts, first_delay=0.5):
            try:
                resp = self._send(method, url, **kw)
            except requests.ConnectionError as exc:
                last = exc
                log.debug("%s %s: %s (retrying)", method, url, exc)
                continue
            if again_if is None or not again_if(resp) or attempt == attempts - 1:
                return resp
            log.info("%s %s: registry answered %s, asking again", method, url, resp.status_code)
        raise RegistryError(f"cannot reach registry {self.reference.host}: {last}") from last

    @staticmethod
    def _errors(resp: requests.Response) -> list[dict[str, Any]]:
        """The ``errors`` of a distribution error body ([] when it is not one)."""
        try:
            body = resp.json()
        except ValueError:
            return []
        errors = body.get("errors") if isinstance(body, dict) else None
        return [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []

    def _fail(self, resp: requests.Response, what: str) -> RegistryError:
        errors = self._errors(resp)
        detail = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors) or resp.text[:500]
        return RegistryError(f"{what}: registry {self.reference.host} answered {resp.status_code}: {detail}")

    # --- blobs ---------------------------------------------------------------------------------
    def has_blob(self, digest: str) -> bool:
        resp = self._request("HEAD", f"/blobs/{digest}", again_if=lambda r: r.status_code == 500)
        if resp.status_code == 200:
            return True
        if resp.status_code == 404:
            return False
        raise self._fail(resp, f"HEAD blob {digest}")

    def push_blob(self, desc: Descriptor, source: BlobSource) -> bool:
        """Upload unless present; returns True when bytes were sent."""
        if self.has_blob(desc.digest):
            return False
        resp = self._request("POST", "/blobs/uploads/", headers={"Content-Length": "0"})
        if resp.status_code not in (202, 201):
            raise self._fail(resp, f"start upload of {desc.digest}")
        location = resp.headers.get("Location", "")
        if not location.startswith("http"):
            location = f"{self._oras.prefix}://{self.reference.host}{location}"
        sep = "&" if "?" in location else "?"
        resp = self._request(
            "PUT",
            f"{location}{sep}digest={desc.digest}",
            data=BlobBody(source, desc.size),
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(desc.size)},
        )
        if resp.status_code not in (201, 204):
            raise self._fail(resp, f"upload blob {desc.digest}")
        return True

    def _get_blob(self, digest: str) -> requests.Response:
        resp = self._request("GET", f"/blobs/{digest}", stream=True)
        if resp.status_code != 200:
            resp.close()
            if resp.status_code == 404:
                raise VerificationFailed("digest_mismatch", f"blob {digest} is missing from the registry")
            raise self._fail(resp, f"GET blob {digest}")
        return resp

    def fetch_blob(
        self, desc: Descriptor, dest: Path, *, on_chunk: Callable[[int], None] | None = None
    ) -> None:
        with self._get_blob(desc.digest) as resp:
            download_verified(resp.iter_content(1 << 20), desc, dest, on_chunk=on_chunk)

    def read_blob(self, desc: Descriptor) -> bytes:
        with self._get_blob(desc.digest) as resp:
            data = resp.content
        if len(data) != desc.size or sha256_digest(data) != desc.digest:
            raise VerificationFailed(
                "digest_mismatch", f"blob {desc.digest}: content does not match its digest or size"
            )
        return data

    # --- manifests -----------------------------------------------------------------------------
    def push_manifest(self, data: bytes, media_type: str, *, tag: str | None = None) -> str:
        digest = sha256_digest(data)
        resp = self._request(
            "PUT",
            f"/manifests/{tag or digest}",
            data=data,
            headers={"Content-Type": media_type},
            again_if=lambda r: (
                r.status_code == 400
                and any(e.get("code") == "MANIFEST_BLOB_UNKNOWN" for e in self._errors(r))
            ),
        )
        if resp.status_code not in (201, 200):
            raise self._fail(resp, f"PUT manifest {tag or digest}")
        echoed = resp.headers.get("Docker-Content-Digest")
        if echoed and echoed != digest:
            raise RegistryError(f"registry stored manifest {tag or digest} as {echoed}, expected {digest}")
        return digest

    def resolve(self, tag_or_digest: str) -> Descriptor:
        resp = self._request("HEAD", f"/manifests/{tag_or_digest}", headers={"Accept": _ACCEPT})
        if resp.status_code == 404:
            raise RegistryError(f"{self.reference.at(tag_or_digest)}: not found")
        if resp.status_code != 200:
            raise self._fail(resp, f"HEAD manifest {tag_or_digest}")
        digest = resp.headers.get("Docker-Content-Digest")
        if not digest:
            _data, desc = self.get_manifest(tag_or_digest)
            return desc
        return Descriptor(
            media_type=resp.headers.get("Content-Type", "").split(";")[0],
            digest=digest,
            size=int(resp.headers.get("Content-Length", "0")),
        )

    def get_manifest(self, tag_or_digest: str) -> tuple[bytes, Descriptor]:
        resp = self._request("GET", f"/manifests/{tag_or_digest}", headers={"Accept": _ACCEPT})
        if resp.status_code == 404:
            raise RegistryError(f"{self.reference.at(tag_or_digest)}: not found")
        if resp.status_code != 200:
            raise self._fail(resp, f"GET manifest {tag_or_digest}")
        data = resp.content
        if tag_or_digest.startswith("sha256:"):
            check_digest(data, tag_or_digest, "manifest")
            digest = tag_or_digest
        else:
            digest = resp.headers.get("Docker-Content-Digest") or sha256_digest(data)
            check_digest(data, digest, f"manifest tagged {tag_or_digest}")
        media_type = resp.headers.get("Content-Type", "").split(";")[0]
        return data, Descriptor(media_type=media_type, digest=digest, size=len(data))

    def tags(self) -> list[str]:
        resp = self._request("GET", "/tags/list")
        if resp.status_code == 404:
            return []
        if resp.status_code != 200:
            raise self._fail(resp, "list tags")
        return list(resp.json().get("tags") or [])

    # --- referrers -----------------------------------------------------------------------------
    def referrers(self, digest: str, artifact_type: str | None = None) -> list[Descriptor]:
        found: list[Descriptor] | None = None
        if self._has_referrers_api is not False:
            resp = self._request("GET", f"/referrers/{digest}", headers={"Accept": mt.OCI_INDEX})
            if resp.status_code == 200 and resp.headers.get("Content-Type", "").startswith(mt.OCI_INDEX):
                self._has_referrers_api = True
                found = [Descriptor.from_json(m) for m in resp.json().get("manifests", [])]
            else:
                self._has_referrers_api = False
        if found is None:
            found = self._fallback_referrers(digest)
        if artifact_type:
            found = [d for d in found if d.artifact_type == artifact_type]
        return found

    def _fallback_referrers(self, digest: str) -> list[Descriptor]:
        try:
            data, _desc = self.get_manifest(fallback_tag(digest))
        except RegistryError as exc:
            if "not found" in str(exc):
                return []
            raise
        return [Descriptor.from_json(m) for m in json.loads(data).get("manifests", [])]

    def add_referrer(self, manifest: bytes, subject: Descriptor) -> Descriptor:
        """Push ``manifest`` (which names ``subject``) and list it in the fallback tag when needed."""
        desc = referrer_descriptor(manifest)
        self.push_manifest(manifest, desc.media_type)
        self.referrers(subject.digest)  # probes for the referrers API once
        if self._has_referrers_api:
            return desc
        existing = self._fallback_referrers(subject.digest)
        if any(d.digest == desc.digest for d in existing):
            return desc
        self.push_manifest(referrers_index([*existing, desc]), mt.OCI_INDEX, tag=fallback_tag(subject.digest))
        return desc

    # --- deletion ------------------------------------------------------------------------------
    def delete_manifest(self, digest: str) -> None:
        resp = self._request("DELETE", f"/manifests/{digest}")
        if resp.status_code not in (202, 200, 404):
            raise self._fail(resp, f"DELETE manifest {digest}")

    def delete_tag(self, tag: str) -> None:
        """Delete what ``tag`` points at (distribution deletes tags by deleting the manifest)."""
        resp = self._request("DELETE", f"/manifests/{tag}")
        if resp.status_code in (202, 200, 404):
            return
        try:
            desc = self.resolve(tag)
        except RegistryError:
            return
        self.delete_manifest(desc.digest)
