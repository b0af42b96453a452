"""The queue seam: where an accepted analysis goes to be run.

Rules for implementations: `enqueue` is called after the analysis row is committed with status
"queued" and must return quickly; the database row, not the queue, is the source of truth, so a
lost queue message is recovered by `start()` re-offering every queued row. Thread-safe.
"""

from __future__ import annotations

from abc import ABC, abstractmethod


class JobQueue(ABC):
    name: str = "abstract"

    @abstractmethod
    def enqueue(self, analysis_id: str) -> None:
        """Offer a committed, queued analysis to be run."""

    @abstractmethod
    def start(self) -> None:
        """Begin running (or dispatching) jobs; re-offer work left over from a previous life."""

    @abstractmethod
    def stop(self) -> None:
        """Stop taking new jobs; running child processes are ended."""
