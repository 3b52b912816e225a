"""Direct tests of two small building blocks: FCH's FIFO memory bank (models/heads/memory_bank.py) and
the chunked parallel runner behind `imgcls data cache` / `dedup` (data/chunked.py)."""

from __future__ import annotations

import pytest
import torch

from imgcls.data.chunked import run_chunks
from imgcls.models.heads.memory_bank import MemoryBank


def test_memory_bank_keeps_the_newest_samples_round_robin():
    bank = MemoryBank(size=3, width=2)
    assert bank.contents()[0].shape == (0, 2)
    bank.push(torch.tensor([[1.0, 1.0], [2.0, 2.0]]), torch.tensor([1, 2]))
    feats, labels = bank.contents()
    assert feats.tolist() == [[1.0, 1.0], [2.0, 2.0]] and labels.tolist() == [1, 2]
    bank.push(torch.tensor([[3.0, 3.0], [4.0, 4.0]]), torch.tensor([3, 4]))  # wraps: slot 0 is overwritten
    feats, labels = bank.contents()
    assert int(bank.filled) == 3 and int(bank.ptr) == 1
    assert feats.tolist() == [[4.0, 4.0], [2.0, 2.0], [3.0, 3.0]] and labels.tolist() == [4, 2, 3]
    bank.push(
        torch.arange(10.0).repeat(2, 1).T, torch.arange(5, 15)
    )  # larger than the bank: its last 3 samples
    assert sorted(bank.contents()[1].tolist()) == [12, 13, 14]
    assert set(bank.state_dict()) == {"features", "labels", "ptr", "filled"}
    bank.reset()
    assert bank.contents()[0].shape[0] == 0


def test_an_empty_bank_ignores_pushes():
    bank = MemoryBank(size=0, width=4)
    bank.push(torch.ones(2, 4), torch.tensor([0, 1]))
    assert bank.contents()[0].shape == (0, 4)


def square(x: int) -> int:
    return x * x


def fail_on_two(x: int) -> int:
    if x == 2:
        raise ValueError("job 2 failed")
    return x


@pytest.mark.parametrize("workers", [0, 2])
def test_run_chunks_returns_every_result(workers):
    jobs = [(k,) for k in range(6)]
    results = dict(run_chunks(square, jobs, sizes=[1] * 6, workers=workers, label="squares", progress=False))
    assert results == {k: k * k for k in range(6)}


def test_run_chunks_propagates_a_failing_job():
    with pytest.raises(ValueError, match="job 2 failed"):
        list(
            run_chunks(
                fail_on_two, [(k,) for k in range(4)], sizes=[1] * 4, workers=0, label="x", progress=False
            )
        )
