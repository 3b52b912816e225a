"""A training batch too large for memory is refused before the first step with one line (runtime/memory.py,
Trainer._check_batch_memory): saved-activation bytes against hand-computed cases, the memory available from
fake /proc trees, and the check leaving the model and the random stream as they were."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from imgcls.engine import trainer as trainer_module
from imgcls.engine.trainer import Trainer
from imgcls.errors import ConfigError
from imgcls.runtime.batch import Batch
from imgcls.runtime.memory import activation_bytes_per_image, available_memory_bytes, saved_tensor_bytes
from test_cpu_threads import _fake_proc, _write


def test_saved_bytes_hand_computed():
    x = torch.randn(4, 10, requires_grad=True)
    assert saved_tensor_bytes(lambda: torch.exp(x)) == 4 * 10 * 4  # exp saves its fp32 result
    # one tensor saved by two operations counts once: x * x saves x twice
    assert saved_tensor_bytes(lambda: x * x) == 4 * 10 * 4
    with torch.no_grad():
        assert saved_tensor_bytes(lambda: torch.exp(x)) == 0  # nothing is saved without autograd


def test_bytes_per_image_of_a_linear_relu_layer():
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Linear(10, 20), nn.ReLU())
    inputs = torch.randn(8, 10)
    # per image: the linear layer saves its 10 inputs (for the weight's gradient), ReLU its 20 outputs; the
    # weight, saved by reference whatever the batch, cancels out
    assert activation_bytes_per_image(lambda n: layer(inputs[:n])) == (10 + 20) * 4


def test_available_memory_is_the_tightest_of_memavailable_and_the_cgroup_headroom(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 8000 kB\nMemFree: 1000 kB\nMemAvailable: 4000 kB\n")
    unified = tmp_path / "unified"
    _write(unified, {"memory.max": "max\n", "memory.current": "1\n"})
    _write(unified / "job", {"memory.max": "3000000\n", "memory.current": "1000000\n"})
    proc = _fake_proc(tmp_path, "0::/job\n", [("cgroup2", "/", str(unified), "rw")])
    assert available_memory_bytes(proc, meminfo) == 2_000_000  # 3 MB limit − 1 MB used < 4,096,000 available
    _write(unified / "job", {"memory.max": "max\n"})
    assert available_memory_bytes(proc, meminfo) == 4000 * 1024
    # cgroup v1: the "no limit" value is ignored; a real limit counts
    mem = tmp_path / "mem"
    _write(mem, {"memory.limit_in_bytes": "9223372036854771712\n", "memory.usage_in_bytes": "5\n"})
    _write(mem / "pod", {"memory.limit_in_bytes": "1048576\n", "memory.usage_in_bytes": "48576\n"})
    (tmp_path / "proc").rename(tmp_path / "old")
    proc1 = _fake_proc(tmp_path, "3:memory:/pod\n0::/\n", [("cgroup", "/", str(mem), "rw,memory")])
    assert available_memory_bytes(proc1, meminfo) == 1_000_000
    assert available_memory_bytes(tmp_path / "none", tmp_path / "no-meminfo") is None


class TinyModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.feature_cache = None

    def forward(self, images, targets=None):
        return self.drop(self.norm(self.conv(images))).mean()


def checker(batch_size: int):
    model = TinyModel().eval()
    return SimpleNamespace(
        model=model,
        device=torch.device("cpu"),
        prep=lambda x: x.float() / 255,
        cfg=SimpleNamespace(train=SimpleNamespace(batch_size=batch_size)),
    ), model


def make_batch(n: int) -> Batch:
    return Batch(torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8), torch.zeros(n, dtype=torch.long))


def test_a_batch_beyond_the_memory_available_is_refused_in_one_line(monkeypatch):
    monkeypatch.setattr(trainer_module, "available_memory_bytes", lambda: 10 * 2**20)
    fake, _ = checker(100_000)
    # conv output, BN output and dropout mask per image: ≥ 3 × 4 × 8 × 8 × 4 bytes ≈ 3 KiB; 100,000 images
    # need far more than 10 MiB
    with pytest.raises(ConfigError) as info:
        Trainer._check_batch_memory(fake, make_batch(100_000), ["fp32"])
    message = str(info.value)
    assert message.startswith("train.batch_size=100000 puts 100000 images in each training step")
    assert "(fp32), more than the 10 MiB available; lower train.batch_size to " in message
    fits = int(message.rsplit("batch_size to ", 1)[1].split()[0])
    assert 1000 < fits < 100_000


def test_the_check_leaves_the_model_and_the_random_stream_alone(monkeypatch):
    monkeypatch.setattr(trainer_module, "available_memory_bytes", lambda: 2**40)
    fake, model = checker(64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch = make_batch(64)
    torch.manual_seed(3)
    Trainer._check_batch_memory(fake, batch, ["fp32", "bf16"])  # fits: no error
    after_check = torch.rand(3)
    torch.manual_seed(3)
    assert torch.equal(torch.rand(3), after_check)  # the dropout draws were not taken from the run's stream
    assert not model.training  # its mode is restored
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key  # BatchNorm statistics untouched
    monkeypatch.setattr(trainer_module, "available_memory_bytes", lambda: None)
    Trainer._check_batch_memory(fake, make_batch(64), ["fp32"])  # memory unknown (not Linux): no check
