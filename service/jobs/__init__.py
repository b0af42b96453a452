"""Job dispatch: one JobQueue back-end per deployment, chosen by settings from one registry (`QUEUES`)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import partial

from service.config import Settings
from service.jobs.base import JobQueue
from solver.registry import Registry

__all__ = ["QUEUES", "JobQueue", "QueueBackend", "backend_names", "get_backend", "make_queue"]


@dataclass(frozen=True)
class QueueBackend:
    """A queue back-end as the registry holds it: a name, `available()` and `make(settings)`.

    A factory rather than the queue itself because a queue needs the deployment's settings (and
    starts threads); a factory rather than the class so that every registry hands out instances.
    Immutable, so one serves every caller. The queue's module is imported on first use only: the
    rq back-end's libraries are optional."""

    name: str
    target: str  # "module:JobQueue subclass"

    def queue_class(self) -> type[JobQueue]:
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)

    def available(self) -> bool:
        return self.queue_class().available()

    def make(self, settings: Settings) -> JobQueue:
        return self.queue_class()(settings)


QUEUES: Registry[QueueBackend] = Registry(
    "job_queue",
    {
        "inline": partial(QueueBackend, "inline", "service.jobs.inline:InlineQueue"),
        "rq": partial(QueueBackend, "rq", "service.jobs.rq_queue:RQQueue"),
    },
    requires={"rq": "rq and redis (pip install 'rq>=2' 'redis>=5')"},
)


def backend_names() -> list[str]:
    return sorted(QUEUES.names())


def get_backend(name: str) -> QueueBackend:
    """The back-end `name`; ValueError listing the valid names when unknown, saying why when unavailable."""
    return QUEUES.get(name)


def make_queue(settings: Settings) -> JobQueue:
    name = settings.job_queue or ("rq" if settings.redis_url else "inline")
    return get_backend(name).make(settings)
