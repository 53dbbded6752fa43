"""The image-build workflow (``.gitea/workflows/build.yaml``) of a platform spec, as data and as YAML.

Public API: ``workflow(spec, spec_path) -> dict`` (the workflow as a data structure) and
``render(workflow) -> str`` (deterministic YAML, PyYAML); ``WORKFLOW_PATH``; ``VARIABLES`` and
``SECRETS`` (what the repository or its organisation must define).

Shape: it runs on a pushed ``v*`` tag and on ``workflow_dispatch`` (input ``arches``: a JSON list,
default every architecture of the spec). Job ``build`` is a matrix over those architectures; each
runs on a worker labelled with its architecture (``runs-on: ${{ matrix.arch }}``: a worker's labels
are its build targets), builds with ``diskci build`` and pushes that architecture's part with ``diskci
push --arch``. Its Build step (id ``build``) writes ``digests``, the build's ``{artifact path: sha256}``
as compact JSON, to ``$GITHUB_OUTPUT`` (``diskci build --github-output``), which is the job's output
``digests``. The second copy of a build in the platform's reproducibility check runs with
``DISKCI_REPLICA=1`` in its job's env (``REPLICA_ENV``): it builds without the cache (a cache hit would
prove nothing) and does not push, so only the first copy's part reaches the registry; the platform
compares the two copies' ``digests``. Job ``publish`` (``needs: build``) joins the parts in the
registry into the OCI index, signs it, pushes it and posts the webhook: ``diskci publish
--from-registry``. It signs as the job: with an authority URL it asks the platform for the job's OIDC
ID token (``permissions: id-token: write``; the runner sets ``ACTIONS_ID_TOKEN_REQUEST_URL``/
``_TOKEN``) and the certificate names the token's workflow, so no signing credential is stored
anywhere. Jobs hand data on through the registry only, never an artifact server. Every value from
outside (matrix entries, inputs, variables, secrets) reaches a shell through ``env``, never spliced
into a script.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:  # type hints only: ``diskci push`` and ``publish`` read WORKFLOW_PATH, not the spec model
    from diskci.spec import PlatformSpec

__all__ = ["DIGESTS_OUTPUT", "REPLICA_ENV", "SECRETS", "VARIABLES", "WORKFLOW_PATH", "render", "workflow"]

WORKFLOW_PATH = ".gitea/workflows/build.yaml"
CHECKOUT = "actions/checkout@v5"  # act checks out locally; the only remote action used
DIGESTS_OUTPUT = "digests"  # the build job's output: {artifact path: sha256}, compact JSON
REPLICA_ENV = "DISKCI_REPLICA"  # "1" in the env of a reproducibility check's second build

# What the workflow reads from the repository's (or organisation's) settings.
VARIABLES = {
    "DISKCI_REGISTRY": "registry host[:port] the publication is pushed to (the spec names the repository)",
    "DISKCI_AUTHORITY": "signing authority: URL of `diskci authority serve` (or a directory on the worker)",
    "DISKCI_WEBHOOK_URL": "disk_image_built webhook of the platform (empty: no notification)",
}
SECRETS = {
    "DISKCI_WEBHOOK_SECRET": "HMAC secret of the webhook (see provision_disk_image_webhook)",
}


def _arches_default(spec: PlatformSpec) -> str:
    return json.dumps([a.value for a in spec.architectures], separators=(",", ":"))


def _expr(text: str) -> str:
    return "${{ " + text + " }}"


def workflow(spec: PlatformSpec, spec_path: str) -> dict[str, Any]:
    """The workflow building ``spec`` (at ``spec_path`` in the repository), as plain data."""
    default = _arches_default(spec)
    arches = f"inputs.arches || '{default}'"
    build_job: dict[str, Any] = {
        "name": "build " + _expr("matrix.arch"),
        "runs-on": _expr("matrix.arch"),
        "strategy": {"matrix": {"arch": _expr(f"fromJSON({arches})")}},
        "outputs": {DIGESTS_OUTPUT: _expr(f"steps.build.outputs.{DIGESTS_OUTPUT}")},
        "steps": [
            {"name": "Check out", "uses": CHECKOUT},
            {
                "name": "Build",
                "id": "build",
                "env": {"ARCH": _expr("matrix.arch"), "DISKCI_NO_CACHE": _expr(f"env.{REPLICA_ENV} == '1'")},
                "run": 'diskci build "$DISKCI_SPEC" --arch "$ARCH" --out "build/$ARCH" --github-output',
            },
            {
                "name": "Push this architecture's part",
                "if": _expr(f"env.{REPLICA_ENV} != '1'"),
                "env": {"ARCH": _expr("matrix.arch")},
                "run": 'diskci push "build/$ARCH" --arch "$ARCH" --to "$DISKCI_REPOSITORY"',
            },
        ],
    }
    publish_job: dict[str, Any] = {
        "needs": "build",
        # any worker of the spec's first architecture: the job builds nothing
        "runs-on": spec.architectures[0].value,
        # the job's OIDC ID token is its signing identity (for an authority URL)
        "permissions": {"contents": "read", "id-token": "write"},
        "steps": [
            {"name": "Check out", "uses": CHECKOUT},
            {
                "name": "Assemble the index, sign, push and notify",
                "env": {
                    "ARCHES": _expr(f"join(fromJSON({arches}), ',')"),
                    "DISKCI_AUTHORITY": _expr("vars.DISKCI_AUTHORITY"),
                    "DISKCI_WEBHOOK_URL": _expr("vars.DISKCI_WEBHOOK_URL"),
                    "DISKCI_WEBHOOK_SECRET": _expr("secrets.DISKCI_WEBHOOK_SECRET"),
                },
                "run": (
                    'diskci publish --from-registry "$DISKCI_REPOSITORY" --spec "$DISKCI_SPEC" \\\n'
                    '  --arch "$ARCHES" --notify-url "$DISKCI_WEBHOOK_URL"\n'
                ),
            },
        ],
    }
    return {
        "name": f"build {spec.name}",
        "on": {
            "push": {"tags": ["v*"]},
            "workflow_dispatch": {
                "inputs": {
                    "arches": {
                        "description": f"Architectures to build, a JSON list (default {default})",
                        "required": False,
                        "type": "string",
                        "default": default,
                    }
                }
            },
        },
        "env": {
            "DISKCI_SPEC": spec_path,
            "DISKCI_REPOSITORY": _expr("vars.DISKCI_REGISTRY") + "/" + spec.registry_repository,
        },
        "jobs": {"build": build_job, "publish": publish_job},
    }


class _Dumper(yaml.SafeDumper):
    """Block style; multi-line strings as literal blocks; keys in the order the data has them."""

    def ignore_aliases(self, data: Any) -> bool:
        return True  # no &anchors: each value written out where it is used


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render(data: dict[str, Any], *, source: str = "") -> str:
    """``data`` as YAML (the same bytes for the same data), headed by a "generated" comment."""
    body = yaml.dump(
        data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1000, allow_unicode=True
    )
    origin = f" from {source}" if source else ""
    return f"# Generated by `diskci ci workflow`{origin}: regenerate it rather than editing it.\n{body}"
