"""Job dispatch: one JobQueue back-end per deployment, chosen by settings from one registry."""

from __future__ import annotations

from importlib import import_module

from service.config import Settings
from service.jobs.base import JobQueue

__all__ = ["JobQueue", "backend_names", "get_backend", "make_queue"]

# Imported on lookup only: the rq back-end's libraries are optional.
_BACKENDS = {"inline": "service.jobs.inline:InlineQueue", "rq": "service.jobs.rq_queue:RQQueue"}


def backend_names() -> list[str]:
    return sorted(_BACKENDS)


def get_backend(name: str) -> type[JobQueue]:
    if name not in _BACKENDS:
        raise ValueError(f"job_queue: unknown back-end {name!r}; valid names: {', '.join(backend_names())}")
    module, _, attr = _BACKENDS[name].partition(":")
    cls = getattr(import_module(module), attr)
    if not cls.available():
        raise ValueError(f"job_queue: back-end {name!r} is not available (pip install 'rq>=2' 'redis>=5')")
    return cls


def make_queue(settings: Settings) -> JobQueue:
    name = settings.job_queue or ("rq" if settings.redis_url else "inline")
    return get_backend(name)(settings)
