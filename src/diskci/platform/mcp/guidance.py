"""The runbook's guidance for the System Concierge, as data: the operator intents' prompts and the
troubleshooting table that the MCP server serves (prompts, and the resource ``diskci://guide/troubleshooting``).

Each prompt tells the assistant which tools to chain for one operator intent and what to remind the
operator of. Only tools that exist are named (``tests`` check every name against the catalog).
The troubleshooting table maps each symptom to the checks that diagnose it: events with their reasons,
the instance stats, a CI worker's status and host stats, a job's log, the publication's failure reason.
The reason codes are the verifier's (``diskci.supplychain.verifier``), the publication processor's and
the CI scheduler's (``worker_lost``, ``not_reproducible``).
"""

from __future__ import annotations

from dataclasses import dataclass

# Retention defaults (``NodePlatform.retention_routine_days`` / ``retention_critical_days``).
ROUTINE_DAYS = 90
CRITICAL_DAYS = 365


@dataclass(frozen=True)
class PromptArgument:
    name: str
    description: str
    required: bool = False


@dataclass(frozen=True)
class Intent:
    """One operator intent: its prompt's name, title, description, arguments and text (a template)."""

    name: str
    title: str
    description: str
    arguments: tuple[PromptArgument, ...]
    text: str
    tools: tuple[str, ...]  # every tool the text names, in the order it chains them


_CONFIRM = (
    "A destructive tool never acts on its first call: show the operator what it would do, and only "
    "once they agree answer the elicitation or call request_confirmation with the confirmation_id, "
    "the same action and the same arguments (within 5 minutes, once)."
)

INTENTS: tuple[Intent, ...] = (
    Intent(
        name="build_disk_image",
        title="Build a new disk image",
        description="Start a disk image build for a node platform (CI run or tag push) and follow it "
        "to its publication.",
        arguments=(
            PromptArgument("platform", "The node platform (name) to build for."),
            PromptArgument("ref", "The tag, branch or commit to build, e.g. v0.3.0."),
        ),
        text=(
            "The operator wants a new disk image{for_platform}{at_ref}.\n"
            "1. system_get_node_platform (name) — check the platform exists; note its architectures and "
            "registry_repository. Unknown? system_list_node_platforms and ask which one.\n"
            "2. CI must be set up: the platform needs an image_build_repository "
            "(system_configure_disk_image_ci, operator) and a webhook (system_list_disk_image_webhooks; "
            "none? provision_disk_image_webhook, admin), and a CI worker with each architecture as a "
            "label (system_list_ci_workers; none? system_provision_ci_worker, admin).\n"
            "3. Start the build, one of two ways: bootstrap_disk_image_ci (node_platform, ref; arches "
            "default to every one the platform has) answers the run_id at once; or the operator pushes "
            "a tag to the image-build repository, and its push webhook starts the run "
            "(system_list_disk_image_ci_runs (node_platform) finds it, newest first).\n"
            "4. Watch it: get_gitea_workflow_run (run_id) until status is completed (the CLI's "
            "`diskci ci watch RUN_ID` does the same); a queued job with waiting_for_labels means no live "
            "worker has those labels (step 2). A job failed? get_gitea_job_logs (run_id, job_name; "
            "offset = next_offset to follow).\n"
            "5. The run's publication_id, then system_get_disk_image_publication (id) — published or "
            "failed (prompt why_publication_failed). No publication yet? system_list_recent_events "
            "(platform; types disk_image_webhook_received, disk_image_published, "
            "disk_image_publication_failed, disk_image_rebuild_identical) and system_get_task (task_id).\n"
            "Remind the operator: a published image is not booted until it is made the default "
            "(prompt publish_version); system_cancel_disk_image_ci_run stops a run (destructive)."
        ),
        tools=(
            "system_get_node_platform",
            "system_list_node_platforms",
            "system_configure_disk_image_ci",
            "system_list_disk_image_webhooks",
            "provision_disk_image_webhook",
            "system_list_ci_workers",
            "system_provision_ci_worker",
            "bootstrap_disk_image_ci",
            "system_list_disk_image_ci_runs",
            "get_gitea_workflow_run",
            "get_gitea_job_logs",
            "system_get_disk_image_publication",
            "system_list_recent_events",
            "system_get_task",
            "system_cancel_disk_image_ci_run",
        ),
    ),
    Intent(
        name="publish_version",
        title="Publish a version",
        description="Make a verified publication of a version the default that nodes boot.",
        arguments=(
            PromptArgument("platform", "The node platform (name).", required=True),
            PromptArgument("version", "The version to publish, e.g. v0.3.0.", required=True),
        ),
        text=(
            "The operator wants to publish {version} on {platform}.\n"
            "1. system_list_disk_image_publications (platform={platform}, version={version}) — find it. "
            "None? It was not delivered yet (prompt check_build; prompt build_disk_image to build it). "
            "Status failed? prompt why_publication_failed; only a published publication can be the "
            "default.\n"
            "2. system_get_disk_image_publication (id) — show its architectures, digest and signer.\n"
            "3. system_diff_disk_image_publications (platform={platform}, to_publication=id) — what "
            "changes from the current default; summarise it for the operator.\n"
            "4. Once the operator agrees: system_set_default_disk_image_publication (platform={platform}, "
            "publication_id=id). Nodes boot it from their next boot.\n"
            "5. system_list_recent_events (platform={platform}) — confirm the change was recorded.\n"
            "Remind the operator: the previous default stays until retention prunes it (never the "
            "default publication); system_mark_disk_image_publication_critical keeps it for "
            f"{CRITICAL_DAYS} days as a fallback."
        ),
        tools=(
            "system_list_disk_image_publications",
            "system_get_disk_image_publication",
            "system_diff_disk_image_publications",
            "system_set_default_disk_image_publication",
            "system_list_recent_events",
            "system_mark_disk_image_publication_critical",
        ),
    ),
    Intent(
        name="check_build",
        title="Check a build",
        description="Where a build stands: its CI run, jobs and logs, then its publication.",
        arguments=(
            PromptArgument("platform", "The node platform (name)."),
            PromptArgument("run_id", "The CI run, if known."),
        ),
        text=(
            "The operator asks how a build is doing{for_platform}{for_run}.\n"
            "1. The run: no run_id? system_list_disk_image_ci_runs (node_platform) — the newest first. "
            "Then get_gitea_workflow_run (run_id) — status (queued, waiting, in_progress, completed), "
            "conclusion, failure_reason (not_reproducible) and failure_detail.\n"
            "2. Its jobs (in the same answer): each job's status, conclusion, failure_reason "
            "(worker_lost: its CI worker stopped reporting), runner and steps; a queued job's "
            "waiting_for_labels names the labels no live worker has (system_list_ci_workers).\n"
            "3. A failed or slow job: get_gitea_job_logs (run_id, job_name, offset) — its log, followed "
            "with next_offset; for its worker, system_get_instance_stats (instance_id: disk, memory, "
            "load from its heartbeats).\n"
            "4. The publication: the run's publication_id, then system_get_disk_image_publication (id) — "
            "published or failed with failure_reason (prompt why_publication_failed). Completed with no "
            "publication? system_list_recent_events (platform; types disk_image_webhook_received, "
            "disk_image_publication_failed, disk_image_rebuild_identical) and system_get_task "
            "(task_id of the webhook event).\n"
            "5. Nothing moves? system_get_instance_stats (tasks by status, last_event_at): a queue that "
            "does not move means no consumer runs. See the resource diskci://guide/troubleshooting."
        ),
        tools=(
            "system_list_disk_image_ci_runs",
            "get_gitea_workflow_run",
            "system_list_ci_workers",
            "get_gitea_job_logs",
            "system_get_instance_stats",
            "system_get_disk_image_publication",
            "system_list_recent_events",
            "system_get_task",
        ),
    ),
    Intent(
        name="tune_retention",
        title="Tune image retention",
        description="Set how long a platform keeps routine and critical publications, previewed.",
        arguments=(PromptArgument("platform", "The node platform (name).", required=True),),
        text=(
            "The operator wants to tune image retention on {platform}.\n"
            "Remind the defaults first: routine publications are kept "
            f"{ROUTINE_DAYS} days, critical ones {CRITICAL_DAYS} days, and the default publication is "
            "never pruned, whatever its age.\n"
            "1. system_get_node_platform (name={platform}) — the current retention_routine_days and "
            "retention_critical_days.\n"
            "2. system_preview_disk_image_retention (platform={platform}) — what the sweep would prune now.\n"
            "3. Once the operator chose the days: system_set_disk_image_retention (platform={platform}, "
            "routine_days, critical_days) (admin).\n"
            "4. system_preview_disk_image_retention again — show what the new rule prunes at the next "
            "daily sweep. A publication to keep longer: system_mark_disk_image_publication_critical.\n"
            "5. Only if the operator wants it pruned now rather than at the daily sweep: "
            "system_prune_disk_image_publications (platform={platform}) (admin) — destructive: "
            + _CONFIRM
            + " Its first answer lists the publications it would delete."
        ),
        tools=(
            "system_get_node_platform",
            "system_preview_disk_image_retention",
            "system_set_disk_image_retention",
            "system_mark_disk_image_publication_critical",
            "system_prune_disk_image_publications",
        ),
    ),
    Intent(
        name="decommission_ci_worker",
        title="Decommission a CI worker",
        description="Take a CI worker out of service (its jobs, its machine, its runner's credentials).",
        arguments=(PromptArgument("worker", "The CI worker's hostname or id."),),
        text=(
            "The operator wants to decommission a CI worker{for_worker}.\n"
            "1. system_list_ci_workers — find it (id, hostname, status online/busy/offline, labels, "
            "current_job, provider and provider_id). Ask which one when it is not clear.\n"
            "2. system_get_instance_stats (instance_id=id) — its disk, memory and load, and the last "
            "heartbeat's time; tell the operator whether it is busy: a busy worker's job is cancelled. "
            "Would the remaining workers still cover every label the platforms build?\n"
            "3. system_terminate_ci_worker (id) (operator) — destructive: " + _CONFIRM + " Its first "
            "answer names the worker, its runners whose credentials stop working, the jobs in progress "
            "it cancels and the machine the provider destroys: show all of it.\n"
            "4. system_get_task (task_id of the answer) — the provider's termination; then "
            "system_list_ci_workers (include_terminated=true) shows it terminated.\n"
            "5. system_list_recent_events (types confirmation_accepted, ci_worker_terminating, "
            "ci_worker_job_cancelled) — confirm it was recorded, with its actor."
        ),
        tools=(
            "system_list_ci_workers",
            "system_get_instance_stats",
            "system_terminate_ci_worker",
            "system_get_task",
            "system_list_recent_events",
        ),
    ),
    Intent(
        name="why_publication_failed",
        title="Why did a publication fail?",
        description="Diagnose a failed publication: its failure reason, its CI run, events and stats.",
        arguments=(
            PromptArgument("platform", "The node platform (name)."),
            PromptArgument("publication_id", "The publication's id, if known."),
        ),
        text=(
            "The operator asks why a publication failed{for_platform}{for_publication}.\n"
            "1. system_list_disk_image_publications (platform, status=failed) — the failed ones, newest "
            "first (skip when the id is known).\n"
            "2. system_get_disk_image_publication (id) — failure_reason and failure_detail.\n"
            "3. system_list_recent_events (platform, type=disk_image_publication_failed) — the reason "
            "with its subject (platform:version) and time; also disk_image_listing_failed.\n"
            "4. Read the resource diskci://guide/troubleshooting: find the reason, run its checks, and "
            "tell the operator what it means and what fixes it (most reasons are fixed in CI or the "
            "platform's signer policy, then rebuilt: prompt build_disk_image). The CI side: the run "
            "(system_list_disk_image_ci_runs, node_platform; the one whose publication_id is this id, "
            "or the newest), get_gitea_workflow_run (run_id) and get_gitea_job_logs (the publish job's "
            "log: what it signed and pushed).\n"
            "5. system_get_instance_stats — failures by status and whether the queue moves.\n"
            "6. A policy to correct: system_get_node_platform, then system_update_node_platform (admin)."
        ),
        tools=(
            "system_list_disk_image_publications",
            "system_get_disk_image_publication",
            "system_list_recent_events",
            "system_list_disk_image_ci_runs",
            "get_gitea_workflow_run",
            "get_gitea_job_logs",
            "system_get_instance_stats",
            "system_get_node_platform",
            "system_update_node_platform",
        ),
    ),
)


def render(intent: Intent, arguments: dict[str, str]) -> str:
    """The intent's text with the operator's arguments (the missing ones left for the assistant to ask)."""
    values = {a.name: arguments.get(a.name) or f"<{a.name}>" for a in intent.arguments}
    given = {a.name: arguments.get(a.name) for a in intent.arguments}
    values.update(
        for_platform=f" for {given['platform']}" if given.get("platform") else "",
        for_version=f" ({given['version']})" if given.get("version") else "",
        for_worker=f" ({given['worker']})" if given.get("worker") else "",
        at_ref=f" at {given['ref']}" if given.get("ref") else "",
        for_run=f" (run {given['run_id']})" if given.get("run_id") else "",
        for_publication=f" (publication {given['publication_id']})" if given.get("publication_id") else "",
    )
    return intent.text.format(**values) + "\n\n" + _FOOTER


_FOOTER = (
    "Call only the tools named; ask the operator for any argument not given. " + _CONFIRM + " Every "
    "confirmation and refusal is recorded as an event with its actor."
)


@dataclass(frozen=True)
class Symptom:
    """A row of the troubleshooting table: what the operator sees, and the checks that diagnose it."""

    symptom: str
    checks: tuple[str, ...]
    reasons: dict[str, str]  # reason code -> what it means and what fixes it


TROUBLESHOOTING: tuple[Symptom, ...] = (
    Symptom(
        symptom="A publication failed verification (status failed)",
        checks=(
            "system_get_disk_image_publication (id): failure_reason and failure_detail",
            "system_list_recent_events (type=disk_image_publication_failed, platform): reason, subject",
            "system_get_node_platform (name): the signer policy (cosign_identity_regexp, cosign_oidc_issuer, "
            "trusted_root) the bundle was checked against",
            "identity_mismatch from CI: failure_detail gives the certificate's identity; "
            "get_gitea_workflow_run (run_id) the run's ref and event, which its job's OIDC identity names: "
            "compare both with cosign_identity_regexp (a tag the regexp does not allow, another workflow)",
        ),
        reasons={
            "reference_mismatch": "the delivered reference is not in the platform's registry_repository",
            "digest_mismatch": "the index (or a blob) is not the delivered digest: bytes changed",
            "manifest_invalid": "not an OCI index of diskci images, or build.json does not match the "
            "platform, version or architectures (an unparsable reference too)",
            "bundle_malformed": "a sigstore bundle could not be read",
            "unknown_ca": "the signing certificate does not chain to the trusted root",
            "certificate_expired": "the certificate was not valid when the signature was made",
            "issuer_mismatch": "the OIDC issuer is not the platform's cosign_oidc_issuer",
            "identity_mismatch": "the signer identity does not match cosign_identity_regexp",
            "signature_invalid": "the signature does not verify over the index",
            "tlog_invalid": "the transparency log entry does not verify",
            "signature_missing": "no bundle signs the index (CI did not sign, or signed another digest)",
            "fsverity_mismatch": "a layer's fs-verity digest is not the one build.json records",
            "reference_not_found": "the registry has no such reference (pushed elsewhere, or pruned)",
            "registry_error": "the registry refused (authentication, permissions)",
            "registry_unreachable": "the registry could not be reached after the retries",
        },
    ),
    Symptom(
        symptom="A build was pushed but no publication appears",
        checks=(
            "system_list_recent_events (type=disk_image_webhook_received, platform): did the webhook arrive?",
            "system_list_disk_image_webhooks (platform): is a webhook provisioned, for CI's URL?",
            "system_get_task (task_id of the webhook event): queued, running, failed",
            "system_get_instance_stats: tasks by status; many queued and none running means no queue "
            "consumer runs (diskci platform consume, or serve --consumer)",
        ),
        reasons={},
    ),
    Symptom(
        symptom="A publication is published but its diff or listing is missing",
        checks=("system_list_recent_events (type=disk_image_listing_failed, platform): the reason",),
        reasons={
            "composefs_unreadable": "an architecture's composefs image could not be read for its listing",
            "listing_too_large": "the listing is over the limit; the publication still boots",
        },
    ),
    Symptom(
        symptom="Nodes boot an old image",
        checks=(
            "system_get_node_platform (name): the current default publication",
            "system_list_disk_image_publications (platform, status=published): the newer one is there?",
            "system_list_node_instances (platform): the nodes and their status",
            "set the default: system_set_default_disk_image_publication (prompt publish_version)",
        ),
        reasons={},
    ),
    Symptom(
        symptom="A publication disappeared (pruned)",
        checks=(
            "system_list_recent_events (type=disk_image_publication_pruned, platform): reason retention",
            "system_list_recent_events (type=disk_image_publication_prune_failed): the registry refused",
            "system_get_node_platform (name): retention_routine_days and retention_critical_days "
            f"(defaults {ROUTINE_DAYS} and {CRITICAL_DAYS}); the default publication is never pruned",
            "system_preview_disk_image_retention (platform): what the next sweep prunes",
        ),
        reasons={
            "retention": "older than the platform's retention for its kind (routine or critical)",
            "registry_error": "the registry refused to delete it (it is retried at the next sweep)",
        },
    ),
    Symptom(
        symptom="A CI job is stuck queued",
        checks=(
            "get_gitea_workflow_run (run_id): the job's waiting_for_labels, the labels no live worker has",
            "system_list_ci_workers: each worker's status (online, busy, offline, provisioning) and labels",
            "system_get_instance_stats (instance_id): the worker's last heartbeat (stats_at), disk, load",
            "no worker with those labels: system_provision_ci_worker (admin, build_targets = the labels)",
        ),
        reasons={
            "offline": "the worker's runner was not heard from for a minute (process down, network)",
            "provisioning": "the machine runs but its runner has not registered yet",
            "busy": "the worker has a job in progress; jobs wait for a free worker",
        },
    ),
    Symptom(
        symptom="A CI job or run failed",
        checks=(
            "get_gitea_workflow_run (run_id): conclusion and failure_reason of the run and of each job, "
            "its steps, and failure_detail",
            "get_gitea_job_logs (run_id, job_name, offset): the failing step's output",
            "system_list_recent_events (type=ci_job_worker_lost or ci_run_not_reproducible): when, which job",
            "system_list_ci_workers and system_get_instance_stats (instance_id): the worker's status, "
            "disk free, memory and load (a full disk or an overloaded host fails builds)",
        ),
        reasons={
            "worker_lost": "the job's CI worker stopped reporting and its lease ran out (machine down, "
            "runner killed, network cut); run the build again: bootstrap_disk_image_ci",
            "not_reproducible": "with reproducibility_check, the two builds of an architecture gave "
            "different artifacts; failure_detail names each artifact with both digests",
            "cancelled": "someone cancelled the run (system_cancel_disk_image_ci_run) or terminated "
            "its worker (system_terminate_ci_worker): the ci_run_cancelled or ci_worker_job_cancelled event "
            "names the actor",
        },
    ),
    Symptom(
        symptom="A build finished but no new publication appeared (same artifacts)",
        checks=(
            "system_list_recent_events (type=disk_image_rebuild_identical, platform): the existing "
            "publication the identical build matched (payload publication_id)",
            "system_get_disk_image_publication (id): that publication, published or pruned",
        ),
        reasons={
            "disk_image_rebuild_identical": "the rebuild produced the very same index digest as an "
            "existing publication: nothing was fetched again and no new publication was made (not an "
            "error: a reproducible build)",
        },
    ),
    Symptom(
        symptom="A destructive call did nothing",
        checks=("system_list_recent_events (type=confirmation_refused): the reason and the actor",),
        reasons={
            "unknown": "no such confirmation id",
            "foreign": "the id was issued to another caller",
            "replayed": "the id was already used",
            "expired": "more than 5 minutes passed: call the action again for a new id",
            "changed": "the arguments are not the ones the id was issued for",
            "declined": "the operator declined",
            "cancelled": "the operator cancelled",
        },
    ),
)


def troubleshooting_table() -> list[dict[str, object]]:
    """The troubleshooting table as JSON data (the resource's content)."""
    return [
        {"symptom": s.symptom, "checks": list(s.checks), "reasons": dict(s.reasons)} for s in TROUBLESHOOTING
    ]
