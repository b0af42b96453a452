import pytest


@pytest.fixture(scope="session")
def one_torch_thread():
    """The models are tiny: one thread is as fast and leaves the shared cores to other tests. Not
    autouse, so the torch-free suites (solver back-ends, exports' registry) never import torch."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
