from __future__ import annotations

import pytest

from workers.digits import train_digits


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    """A digits MLP trained once per session (a few seconds), with calibration and evaluation files."""
    return train_digits(tmp_path_factory.mktemp("digits"), epochs=15, calibration_samples=128)
