"""Which job failures the job layer retries: out of memory never (the analysis already lowered its batches)."""

import pytest
import torch

from service.errors import StorageError
from service.jobs.child import is_transient
from workers.errors import AnalysisError, DatasetError


def test_a_real_cpu_allocator_failure_is_not_retried():
    with pytest.raises(RuntimeError) as info:
        torch.empty(2**62, dtype=torch.uint8)
    assert not is_transient(info.value)
    wrapped = AnalysisError("model forward failed on a calibration batch")
    wrapped.__cause__ = info.value
    assert not is_transient(wrapped)


def test_out_of_memory_of_every_kind_is_final():
    assert not is_transient(MemoryError())
    assert not is_transient(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not is_transient(AnalysisError("out of memory on cpu even with batch size 1: lower options.max_length"))
    assert not is_transient(OSError(12, "failed to map segment from shared object"))


def test_machine_hiccups_are_retried_and_bad_input_is_not():
    assert is_transient(StorageError("database is locked"))
    assert is_transient(ConnectionError("refused"))
    assert is_transient(OSError(5, "Input/output error"))
    assert not is_transient(DatasetError("inputs: must be a floating-point tensor"))
