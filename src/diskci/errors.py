"""The one error base of diskci, and the families every room derives its errors from.

Only the CLI (and the HTTP error handler) turn an error into a message and an exit code or status;
everything else raises. Third-party errors are translated at the boundary (``raise X(...) from exc``).

Every error class of the package, with the module of those that live outside this one (a domain error
stays next to the code that raises it; only the families live here). tests/unit/test_error_tree.py
checks that this drawing and the classes agree:

    DiskciError                      exit 1; ``diagnostics()`` is the one-paragraph message
    ├── UsageError                   exit 2: a bad flag or argument combination
    │   ├── InsecureSettings         (platform.settings) a well-known, short or world-readable secret
    │   ├── InvalidReference         (registry.reference) a reference that cannot be parsed
    │   └── NotRegistered            (runner.state) no readable runner state file in the directory
    ├── SpecError                    exit 2: an invalid platform spec (every problem, with its field path)
    ├── ToolError                    an external tool failed: argv, exit status, tail of its output
    ├── BuildError                   a build stage could not do its job
    │   ├── CacheError
    │   ├── MirrorError              (image.mirror) the mirror is unreachable or lacks the suite
    │   └── ResourceError            not enough disk, a missing package, no emulation
    │       ├── BootLoaderMissing    (image.artifacts.esp) no UEFI boot loader in the root filesystem
    │       └── StubMissing          (image.artifacts.uki) no systemd UEFI stub for the UKI
    ├── FormatError                  bad input to a format writer/reader (tar, EROFS, composefs, cpio)
    │   ├── DumpFormatError          (formats.composefs_dump) a composefs dump mkcomposefs would refuse
    │   ├── ErofsError               (formats.erofs) the tree cannot be written as EROFS
    │   ├── ImageFormatError         (formats.composefs_reader) a corrupt or hostile composefs image
    │   ├── IngestError              (formats.ingest) a file could not be read as its size says
    │   ├── ListingFormatError       (formats.composefs_diff) not a composefs listing diskci packed
    │   └── TreeFormatError          (formats.fstree) a tarball or directory cannot be represented
    ├── SupplyChainError             signing authority and bundle problems
    │   ├── AuthorityError           (supplychain.authority) cannot create, open or issue
    │   ├── IdTokenRequestFailed     (supplychain.id_token) a CI job got no ID token from its platform
    │   ├── IssuerUnavailable        (supplychain.id_token) 503: a trusted issuer's keys cannot be fetched
    │   ├── LogInconsistent          (supplychain.log_audit) the log is not what it acknowledged
    │   ├── PolicyMismatch           (supplychain.policy) not the policy's signer; a sigstore error too
    │   └── VerificationFailed       carries a machine-readable ``reason`` code
    ├── RegistryError                OCI registry or layout problems
    ├── NotifyError                  webhook delivery failed
    ├── RunnerCallFailed             (runner.client) a runner protocol call answered an error, or unreachable
    ├── RemoteActionFailed           (cli.remote_actions) --url names no reachable platform API
    ├── BootTimeout                  (qemu) the awaited console line did not come; the console tail
    ├── DemoError                    (demo) a step of ``diskci demo`` did not do what it should
    └── PlatformError                control-plane errors; each carries its HTTP status (500 by default)
        ├── BodyTooLarge             (platform.http.limits) 413
        ├── DatabaseUnavailable      (platform.actions.catalog) 503
        ├── DuplicateAction          (platform.actions.catalog) an action name registered twice
        ├── GiteaBadAnswer           (platform.gitea.answers) 502: an answer Gitea's API does not document
        ├── GiteaRefused             (platform.gitea.answers) 502: Gitea's 4xx, with its status and message
        │   ├── GiteaInvalidRequest  (platform.gitea.answers) 400: Gitea refused the content (its 400/422)
        │   ├── GiteaNotFound        (platform.gitea.answers) 404: repository, workflow, run, job or log
        │   │   └── GiteaRunnerNotFound  (platform.gitea.answers) a runner Gitea no longer knows
        │   └── GiteaTokenRefused    (platform.gitea.answers) Gitea's 401/403: diskci's token or its scopes
        ├── GiteaUnavailable         (platform.gitea.answers) 503: unreachable, timed out, 5xx after retries
        │   └── GiteaOutcomeUnknown  (platform.gitea.answers) a call not to repeat failed once sent
        ├── GiteaUnsupported         (platform.gitea.answers) 501: this Gitea has no such endpoint (cancel)
        ├── PortUnavailable          (platform.ports) 503: the adapter was not given a port it needs
        ├── PreviewNotAvailable      (platform.actions.retention)
        ├── ProviderFailed           (platform.providers.base) 502: a compute provider could not do it
        ├── QueueUnavailable         (platform.http.webhooks) 503
        ├── RateLimited              (platform.services.ratelimit) 429, with ``retry_after`` seconds
        ├── RepositoryUnavailable    (platform.ci.gitsource) 503: git cannot fetch or read it now
        ├── RetryLater               (platform.services.publication_processor) 503: a transient failure
        ├── SecretDecryptionFailed   (platform.secrets) the secret key changed, or the value was altered
        ├── SigningFailed            (platform.secureboot.signer) sbsign (or the signer plug-in) failed
        ├── NotFound                 404
        │   ├── CiJobNotFound        (platform.actions.ci_runs)
        │   ├── CiRunNotFound        (platform.actions.ci_runs)
        │   ├── CiWorkerNotFound     (platform.actions.ci_workers)
        │   ├── ListingUnavailable   (platform.actions.publication_diff) no listing to diff, and why
        │   ├── NoSigningKey         (platform.secureboot.keys) the fleet has no Secure Boot key yet
        │   ├── PlatformNotFound     (platform.actions.platforms)
        │   ├── PublicationNotFound  (platform.actions.publications)
        │   ├── StatsNotAvailable    (platform.actions.ci_workers) no heartbeat with statistics yet
        │   ├── TaskNotFound         (platform.actions.events)
        │   ├── TokenNotFound        (platform.actions.tokens)
        │   ├── UnknownRef           (platform.ci.gitsource) a ref not in the image-build repository
        │   ├── UnknownTask          (platform.http.runner_protocol) not a task of the calling runner
        │   └── WorkflowNotFound     (platform.ci.gitsource) no workflow file at that commit
        ├── Conflict                 409
        │   ├── CiNotConfigured      (platform.ci.triggers) the platform has no image-build repository
        │   ├── ConcurrentChange     (platform.actions.catalog) a racing change won
        │   ├── DuplicateEntry       (supplychain.tlog) an entry the transparency log already holds
        │   ├── HostnameInUse        (platform.actions.ci_workers) a live CI worker has that hostname
        │   ├── MacAddressInUse      (platform.actions.instances)
        │   ├── PlatformExists       (platform.actions.platforms)
        │   ├── PublicationNotPublishable  (platform.actions.publications)
        │   ├── ReplayedDelivery     (platform.http.webhooks)
        │   ├── RetentionLocked      (platform.services.retention) another sweep is pruning
        │   ├── RunAlreadyCompleted  (platform.actions.ci_runs) cancelling a completed run
        │   └── TokenExists          (platform.actions.tokens)
        ├── Unauthorized             401
        │   ├── BadSignature         (platform.http.webhooks)
        │   ├── BadGiteaSignature    (platform.gitea.webhooks) a Gitea delivery not signed with its secret
        │   ├── BadPushSignature     (platform.http.ci_push) a push event not signed with the push secret
        │   ├── IdTokenRefused       (supplychain.id_token) an ID token the signing authority refuses
        │   ├── InvalidToken         (platform.actions.tokens)
        │   ├── MissingToken         (platform.http.auth)
        │   ├── NotSignedIn          (platform.web.session) the dashboard has no live session
        │   ├── RegistrationTokenRefused  (platform.ci.runners) unknown, used or expired
        │   ├── RunnerRefused        (runner.client) exit 3: the platform refused the runner or its token
        │   ├── RunnerUnauthenticated    (platform.ci.runners) no live runner's uuid and token
        │   ├── RuntimeTokenRefused  (platform.ci.oidc) unknown, or its job no longer in progress
        │   ├── StaleDelivery        (platform.http.webhooks)
        │   └── UnknownTokenName     (platform.mcp.transport) the stdio server's token is gone
        ├── Forbidden                403
        │   ├── ConfirmationRefused  (platform.mcp.confirmations) unknown, foreign, spent, expired
        │   └── CsrfRefused          (platform.web.session) a dashboard form without its CSRF token
        └── InvalidRequest           400, exit 2
            ├── ConfirmationRequired (platform.actions.catalog) 428: a destructive action, unconfirmed
            ├── EntityTooLarge       (supplychain.authority_http) 413: a request over the size limit
            ├── MalformedEntry       (supplychain.rekor_entries) a log entry Rekor would refuse
            ├── InvalidAudience      (platform.ci.oidc) an ID token audience that is not 1-255 ASCII
            ├── InvalidCiVariables   (platform.actions.ci_settings) a bad name, a long value, too many
            ├── InvalidDigest        (platform.services.blobcache) not a sha256 digest
            ├── InvalidExpression    (platform.ci.expressions) a ${{ }} a workflow's job cannot be split by
            ├── InvalidForm          (platform.web.pages) a dashboard form with too many fields
            ├── InvalidMacAddress    (platform.actions.instances) also a ValueError, for pydantic
            ├── InvalidPlatform      (platform.actions.platforms)
            ├── InvalidRunnerLabels  (platform.ci.runners)
            ├── InvalidWorkflow      (platform.ci.jobs) a workflow file that cannot be split into jobs
            ├── MalformedDelivery    (platform.http.webhooks)
            ├── MalformedGiteaEvent  (platform.gitea.webhooks) a signed Gitea delivery that is not its event
            ├── MalformedPushEvent   (platform.http.ci_push) not a push event's JSON
            ├── NoDefaultPublication (platform.actions.publication_diff) nothing to diff from
            ├── NotGiteaBacked       (platform.gitea.platform_client) the platform's CI backend is not Gitea
            ├── PublicationOfAnotherPlatform  (platform.actions.publication_diff)
            ├── UnknownBuildTarget   (platform.actions.ci_workers) not an architecture diskci builds
            ├── UnknownInstanceType  (platform.providers.base) not in the provider's catalog (region)
            ├── UnknownProvider      (platform.providers) no compute provider of that name
            ├── UnknownRegion        (platform.providers.base) not in the provider's catalog
            ├── UndefinedArchitecture  (platform.actions.ci_runs) arches the platform does not define
            ├── UnreadableRepository  (platform.ci.gitsource) a repository URL git cannot read
            └── UnknownAction        (platform.actions.catalog) 404
"""

from __future__ import annotations

from collections.abc import Sequence


class DiskciError(Exception):
    """Base of every error diskci raises on purpose."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def diagnostics(self) -> str:
        """The message shown to a person: what went wrong, and what to do about it when known."""
        if self.hint:
            return f"{self.message}\n{self.hint}"
        return self.message


class UsageError(DiskciError):
    exit_code = 2


class SpecError(DiskciError):
    """An invalid platform spec; ``problems`` holds (field path, what was expected) pairs."""

    exit_code = 2

    def __init__(self, source: str, problems: Sequence[tuple[str, str]]) -> None:
        self.source = source
        self.problems = list(problems)
        lines = "\n".join(f"  {loc}: {msg}" for loc, msg in self.problems)
        super().__init__(f"{source}: invalid platform spec ({len(self.problems)} problem(s))\n{lines}")


class ToolError(DiskciError):
    """An external program exited non-zero."""

    def __init__(
        self,
        tool: str,
        argv: Sequence[str],
        returncode: int,
        output_tail: str = "",
        *,
        hint: str | None = None,
    ) -> None:
        import shlex

        self.tool = tool
        self.argv = list(argv)
        self.returncode = returncode
        self.output_tail = output_tail
        msg = f"{tool} failed with exit status {returncode}: {shlex.join(self.argv)}"
        if output_tail.strip():
            msg += "\n--- last lines of its output ---\n" + output_tail.rstrip()
        super().__init__(msg, hint=hint)


class BuildError(DiskciError):
    pass


class CacheError(BuildError):
    pass


class ResourceError(BuildError):
    pass


class FormatError(DiskciError):
    pass


class SupplyChainError(DiskciError):
    pass


class VerificationFailed(SupplyChainError):
    """A publication or bundle failed verification; ``reason`` is a stable code such as
    ``identity_mismatch``, ``issuer_mismatch``, ``signature_invalid``, ``digest_mismatch``."""

    def __init__(self, reason: str, message: str, *, hint: str | None = None) -> None:
        self.reason = reason
        super().__init__(f"{reason}: {message}", hint=hint)


class RegistryError(DiskciError):
    pass


class NotifyError(DiskciError):
    pass


class PlatformError(DiskciError):
    http_status: int = 500


class NotFound(PlatformError):
    http_status = 404


class Conflict(PlatformError):
    http_status = 409


class Unauthorized(PlatformError):
    http_status = 401


class Forbidden(PlatformError):
    http_status = 403


class InvalidRequest(PlatformError):
    http_status = 400
    exit_code = 2
