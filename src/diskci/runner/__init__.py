"""The CI worker's agent (``diskci runner``): registration, Gitea's runner protocol client, running each
task's job with act in host mode, and the daemon loop.

Modules, each with one job: ``client`` (runner.v1 over Connect JSON, with retries), ``state`` (the
state file ``DIR/runner.json``), ``hoststats`` (disk, memory and load for heartbeats), ``act_output``
(act's ``--json`` lines folded into log rows, steps and a result), ``reporter`` (one task's state,
streamed to the platform), ``act_job`` (one task: clone, act, cancel) and ``agent`` (the loop).
The runner never imports ``diskci.platform``: it runs on worker machines and speaks only HTTP.
"""
