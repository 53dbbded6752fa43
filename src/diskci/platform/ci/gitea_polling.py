"""Polling of Gitea-backed CI runs, the cover for webhook deliveries Gitea never made or diskci missed.

``GiteaRunPoller.poll`` syncs every unfinished Gitea-backed run that is due (``gitea_runs.sync``), each
with its own back-off: 2 s after a sync that changed something, doubling up to 60 s while nothing
changes or Gitea fails. A run that fails in any way is logged and backed off; the others go on (one
bad platform does not stop them). It answers the seconds until the next run is due, or None when no
run needs polling.

The queue drives it as a chain of one-shot tasks (``diskci.platform.tasks``): each round schedules the
next at the delay ``poll`` answered. ``start_chain`` (every minute) starts a chain when none has beaten
lately; the chain's id and heartbeat live in the queue's key-value storage, so a second chain (two
consumers starting one at once) finds itself superseded and stops.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from huey import Huey

from diskci.platform.ci import gitea_runs
from diskci.platform.db.session import Database
from diskci.platform.secrets import SecretBox

__all__ = ["CHAIN_KEY", "MAX_DELAY", "MIN_DELAY", "GiteaRunPoller", "chain_round", "start_chain"]

log = logging.getLogger(__name__)

MIN_DELAY = 2.0
MAX_DELAY = 60.0
CHAIN_KEY = "diskci.gitea_runs.poll_chain"
CHAIN_STALE = 90.0  # a chain that has not beaten for this long is dead (its consumer stopped)


class GiteaRunPoller:
    """Which Gitea-backed runs are due for a sync, and their back-off (kept in this process)."""

    def __init__(
        self,
        *,
        min_delay: float = MIN_DELAY,
        max_delay: float = MAX_DELAY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.min_delay = min_delay
        self.max_delay = max_delay
        self._clock = clock
        self._lock = threading.Lock()
        self._due: dict[int, tuple[float, float]] = {}  # run_id → (when due, current delay)

    def delay_of(self, run_id: int) -> float | None:
        with self._lock:
            entry = self._due.get(run_id)
        return entry[1] if entry else None

    def poll(self, database: Database, box: SecretBox) -> float | None:
        """Sync every due run; the seconds until the next is due (None: nothing to poll)."""
        with database.read_session() as session:
            run_ids = gitea_runs.unfinished_run_ids(session)
        with self._lock:
            self._due = {r: entry for r, entry in self._due.items() if r in set(run_ids)}
        for run_id in run_ids:
            now = self._clock()
            with self._lock:
                due, delay = self._due.get(run_id, (now, self.min_delay))
            if due > now:
                continue
            try:
                outcome = gitea_runs.sync(database, box, run_id)
            except Exception:  # the loop's boundary: a broken platform must not stop the others
                log.exception("Gitea backend: syncing CI run %d failed", run_id)
                outcome = gitea_runs.SyncOutcome(error="sync failed")
            with self._lock:
                if outcome.done and outcome.error is None:
                    self._due.pop(run_id, None)
                    continue
                quiet = outcome.error is not None or not outcome.changed
                delay = min(delay * 2, self.max_delay) if quiet else self.min_delay
                self._due[run_id] = (self._clock() + delay, delay)
        with self._lock:
            if not self._due:
                return None
            return max(0.0, min(due for due, _ in self._due.values()) - self._clock())


def start_chain(huey: Huey, *, now: float | None = None) -> str | None:
    """A new chain id when no chain has beaten within ``CHAIN_STALE`` seconds (else None)."""
    now = time.time() if now is None else now
    beat: Any = huey.get(CHAIN_KEY, peek=True)
    if isinstance(beat, dict) and now - float(beat.get("at", 0)) < CHAIN_STALE:
        return None
    chain = uuid.uuid4().hex
    huey.put(CHAIN_KEY, {"chain": chain, "at": now})
    return chain


def chain_round(
    huey: Huey, chain: str, poller: GiteaRunPoller, database: Database, box: SecretBox
) -> float | None:
    """One round of chain ``chain``: the delay before its next round, or None when it ends (superseded
    by another chain, or nothing to poll)."""
    beat: Any = huey.get(CHAIN_KEY, peek=True)
    if not isinstance(beat, dict) or beat.get("chain") != chain:
        return None
    delay = poller.poll(database, box)
    if delay is None:
        huey.get(CHAIN_KEY)  # taken: the next minute's start_chain begins anew when runs appear
        return None
    huey.put(CHAIN_KEY, {"chain": chain, "at": time.time()})
    return max(delay, 0.5)
