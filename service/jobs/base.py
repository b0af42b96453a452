"""The queue seam: where an accepted job (an analysis, an evaluation) goes to be run.

A job is a kind (a key of service.jobs.kinds.KINDS) and the id of its row; every kind has the same
lifecycle columns, so a back-end never needs to know what a kind computes.

Rules for implementations: `enqueue` is called after the job's row is committed with status
"queued" and must return quickly; the database row, not the queue, is the source of truth, so a
lost queue message is recovered by `start()` re-offering every queued row, and a duplicate offer is
harmless (only one attempt can claim a row). Thread-safe. Back-ends carry a `name` and an
`available()` check (false when an optional library is missing; importing the module never fails).
Whatever runs the jobs runs them through service.jobs.runner, so lifecycle, heartbeat, cancel and
retry behave the same on every back-end.
"""

from __future__ import annotations

from abc import ABC, abstractmethod


class JobQueue(ABC):
    name: str = "abstract"

    @classmethod
    def available(cls) -> bool:
        return True

    @abstractmethod
    def enqueue(self, kind: str, job_id: str) -> None:
        """Offer a committed, queued job of `kind` to be run."""

    @abstractmethod
    def start(self) -> None:
        """Begin running (or dispatching) jobs; re-offer work left over from a previous life."""

    @abstractmethod
    def stop(self) -> None:
        """Stop taking new jobs; running child processes are ended."""
