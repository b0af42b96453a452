"""Job dispatch: one JobQueue back-end per deployment, chosen by settings."""

from __future__ import annotations

from service.config import Settings
from service.jobs.base import JobQueue

__all__ = ["JobQueue", "make_queue"]


def make_queue(settings: Settings) -> JobQueue:
    if settings.redis_url:
        raise NotImplementedError("the Redis (RQ) queue arrives with issue 5; unset BITPLAN_REDIS_URL")
    from service.jobs.inline import InlineQueue

    return InlineQueue(settings)
