"""Suite-wide test settings.

Every evaluation times inference throughput for its report (``eval.throughput_s``, 1.5 s by default); the suite
runs about 150 evaluations, so in-process tests time one batch instead (what ``eval.throughput_s: 0`` does).
``tests/test_evaluation.py`` checks the timing itself with real durations."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _throughput_timed_over_one_batch(monkeypatch):
    from imgcls.evaluation import evaluate

    timed = evaluate.inference_throughput

    def one_batch(*args, **kwargs):
        return timed(*args, **{**kwargs, "seconds": 0.0})

    one_batch.timed = timed  # the real function, for the tests of the timing itself
    monkeypatch.setattr(evaluate, "inference_throughput", one_batch)
