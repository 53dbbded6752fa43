"""The embedded CI backend: workflows split into jobs, runs and jobs kept, handed to CI workers.

``jobs`` splits a workflow file the way Gitea does (with ``expressions`` for the values it evaluates);
``scheduler`` keeps runs and jobs moving (dispatch to a worker whose labels match, state, logs);
``platform.http.runner_protocol`` serves Gitea's runner protocol on top of it.
"""
