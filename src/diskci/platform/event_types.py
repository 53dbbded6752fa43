"""Every event type the platform records, with what it means: the one list the event filters check
(``system_list_recent_events``: an unknown type is an error, not an empty answer) and operators read.

A unit test reads the source for every event the platform records and checks it is listed here."""

from __future__ import annotations

EVENT_TYPES: dict[str, str] = {
    # tokens and confirmations
    "api_token_created": "an API token was created (its name and role)",
    "api_token_revoked": "an API token was revoked",
    "confirmation_requested": "a destructive call was asked to be confirmed (its confirmation id)",
    "confirmation_accepted": "a destructive call was confirmed (by id, elicitation or --yes)",
    "confirmation_refused": "a confirmation was refused (reason: declined, expired, replayed, foreign, ...)",
    # node platforms, webhooks, nodes
    "node_platform_created": "a node platform was created",
    "node_platform_updated": "a node platform's fields changed (which ones)",
    "disk_image_webhook_provisioned": "a platform's webhook secret was made",
    "disk_image_webhook_rotated": "a platform's webhook secret was rotated (the previous one in its grace)",
    "disk_image_webhook_received": "a signed webhook delivery was accepted and queued",
    "node_instance_registered": "a node instance was registered (its MAC addresses)",
    "netboot_report": "a node reported a boot stage (reason: the status it reported)",
    # publications
    "disk_image_published": "a delivery was verified and published",
    "disk_image_rebuild_identical": "a publication's build is byte-identical to an earlier one (deduped)",
    "disk_image_publication_failed": "a delivery failed verification (reason: what failed)",
    "disk_image_listing_failed": "a delivery's registry listing could not be read",
    "disk_image_default_changed": "the publication nodes netboot changed",
    "disk_image_publication_critical": "a publication was marked critical (kept 365 days)",
    "disk_image_publication_routine": "a publication was marked routine again",
    "disk_image_uki_signed": "a publication's unified kernel images were signed for Secure Boot",
    "disk_image_uki_signing_failed": "signing a publication's unified kernel images failed (reason)",
    # retention
    "disk_image_retention_changed": "a platform's retention days changed",
    "disk_image_retention_pruned": "a prune was run now (what it removed)",
    "disk_image_publication_pruned": "a publication was pruned by retention",
    "disk_image_publication_prune_failed": "pruning a publication failed (reason)",
    # CI
    "disk_image_ci_configured": "a platform's image-build repository or CI variables were set",
    "ci_run_queued": "a CI run was queued (by a tag push, or bootstrap_disk_image_ci)",
    "ci_run_cancelled": "a CI run was cancelled (its unfinished jobs)",
    "ci_run_reproducible": "a reproducibility check's two builds were byte-identical",
    "ci_run_not_reproducible": "a reproducibility check's two builds differ (which artifacts)",
    "ci_job_worker_lost": "a job's worker stopped renewing its lease: the job failed worker_lost",
    "ci_run_dispatch_failed": "Gitea refused a run's dispatch (gitea_refused) or never showed its run"
    " (gitea_run_not_found): the run failed",
    "ci_run_sync_failed": "Gitea could not be read for a run (once per outage; the run shows sync_error)",
    "ci_run_discovered": "a Gitea run diskci did not dispatch (a tag push in Gitea) got a CI run",
    "ci_run_cancel_requested": "a run's cancel was asked of a Gitea without a cancel API"
    " (gitea_has_no_cancel: its runners were deregistered), or before its Gitea run was found",
    "ci_worker_provisioning": "a CI worker was asked for (its provider, region, type, labels)",
    "ci_worker_provisioned": "a CI worker's machine was made and its runner registered",
    "ci_worker_provisioning_failed": "making a CI worker's machine failed (reason)",
    "ci_worker_terminating": "a CI worker is being decommissioned",
    "ci_worker_job_cancelled": "a job in flight was cancelled by its worker's decommission (operator notice)",
    "ci_worker_terminated": "a CI worker's runner was deregistered and its machine destroyed",
    "ci_worker_runner_deregistered": (
        "a Gitea-backed CI worker's runner was deleted in Gitea (reason: runner_already_gone, "
        "runner_not_registered, ... when there was nothing to delete)"
    ),
    "ci_worker_termination_failed": "destroying a CI worker's machine failed (reason)",
}
