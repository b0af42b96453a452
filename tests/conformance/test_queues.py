"""Every registered queue back-end resolves to the same kind of thing: a shared, immutable
`QueueBackend` whose `make(settings)` builds that back-end's `JobQueue`. How the queues behave
(cancel, retry, events) is one suite over every back-end in tests/service/test_queue_backends.py."""

import pytest

from service.jobs import QUEUES, JobQueue, QueueBackend, backend_names, get_backend, make_queue
from tests.utils.queue_factories import queue_settings


@pytest.fixture(params=backend_names())
def name(request):
    state = QUEUES.available(request.param)
    if not state:
        assert state.reason  # an unavailable back-end says why
        with pytest.raises(ValueError, match=f"^job_queue: '{request.param}' is not available here \\(.+\\)$"):
            get_backend(request.param)
        pytest.skip(f"queue back-end {request.param}: {state.reason}")
    return request.param


def test_resolves_to_a_shared_factory_instance(name):
    backend = get_backend(name)
    assert isinstance(backend, QueueBackend) and backend.name == name
    assert get_backend(name) is backend
    cls = backend.queue_class()
    assert issubclass(cls, JobQueue) and cls.name == name and cls.available() is True


def test_makes_its_queue_from_settings_without_starting_it(name, tmp_path):
    settings = queue_settings(tmp_path, None, "redis://127.0.0.1:1/0" if name == "rq" else None, job_queue=name)
    queue = make_queue(settings)
    assert isinstance(queue, get_backend(name).queue_class()) and queue.name == name
    assert type(get_backend(name).make(settings)) is type(queue)


def test_unknown_back_end_lists_the_valid_names():
    with pytest.raises(ValueError, match=r"^job_queue: unknown 'celery' \(valid: inline, rq\)$"):
        get_backend("celery")
