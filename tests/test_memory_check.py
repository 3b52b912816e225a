"""A training batch too large for memory is refused before the first step with one line (runtime/memory.py,
Trainer._check_batch_memory): saved-activation bytes against hand-computed cases, the memory available from
fake /proc trees, and the check leaving the model and the random stream as they were."""

from __future__ import annotations

import functools
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from fake_proc import fake_proc, write_files
from imgcls.engine import trainer as trainer_module
from imgcls.engine.trainer import Trainer
from imgcls.errors import ConfigError
from imgcls.runtime.batch import Batch
from imgcls.runtime.cgroups import cgroup_folders
from imgcls.runtime.distributed import DistInfo
from imgcls.runtime.memory import activation_bytes_per_image, available_memory_bytes, saved_tensor_bytes


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
    write_files(unified, {"memory.max": "max\n", "memory.current": "1\n"})
    write_files(unified / "job", {"memory.max": "3000000\n", "memory.current": "1000000\n"})
    proc = fake_proc(tmp_path, "0::/job\n", [("cgroup2", "/", str(unified), "rw")])
    assert available_memory_bytes(proc, meminfo) == 2_000_000  # 3 MB limit − 1 MB used < 4,096,000 available
    write_files(unified / "job", {"memory.max": "max\n"})
    assert available_memory_bytes(proc, meminfo) == 4000 * 1024
    # cgroup v1: the "no limit" value is ignored; a real limit counts
    mem = tmp_path / "mem"
    write_files(mem, {"memory.limit_in_bytes": "9223372036854771712\n", "memory.usage_in_bytes": "5\n"})
    write_files(mem / "pod", {"memory.limit_in_bytes": "1048576\n", "memory.usage_in_bytes": "48576\n"})
    (tmp_path / "proc").rename(tmp_path / "old")
    proc1 = fake_proc(tmp_path, "3:memory:/pod\n0::/\n", [("cgroup", "/", str(mem), "rw,memory")])
    assert available_memory_bytes(proc1, meminfo) == 1_000_000
    assert available_memory_bytes(tmp_path / "none", tmp_path / "no-meminfo") is None


def test_cgroup_folders_run_from_the_process_cgroup_up_to_each_mount(tmp_path):
    unified, mem, cpu = tmp_path / "unified", tmp_path / "mem", tmp_path / "cpu"
    proc = fake_proc(
        tmp_path,
        "4:memory:/pod/c1\n3:cpu,cpuacct:/other\n0::/slice/job\n",
        [
            ("cgroup2", "/", str(unified), "rw"),
            ("cgroup", "/", str(mem), "rw,memory"),
            ("cgroup", "/", str(cpu), "rw,cpu,cpuacct"),
        ],
    )
    assert cgroup_folders("memory", proc) == [
        ("v2", unified / "slice" / "job"),
        ("v2", unified / "slice"),
        ("v2", unified),
        ("v1", mem / "pod" / "c1"),
        ("v1", mem / "pod"),
        ("v1", mem),
    ]
    assert cgroup_folders("cpu", proc)[-2:] == [
        ("v1", cpu / "other"),
        ("v1", cpu),
    ]  # v1: the controller's own tree
    assert cgroup_folders("memory", tmp_path / "missing") == []


def test_page_cache_in_a_cgroup_counts_as_free(tmp_path):
    """A container that read its data set shows the page cache in its usage; the kernel reclaims it."""
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemAvailable: 100000000 kB\n")
    unified = tmp_path / "unified"
    write_files(
        unified / "job",
        {
            "memory.max": "3000000\n",
            "memory.current": "2900000\n",
            "memory.stat": "anon 900000\nfile 2000000\ninactive_file 1800000\nactive_file 200000\n",
        },
    )
    proc = fake_proc(tmp_path, "0::/job\n", [("cgroup2", "/", str(unified), "rw")])
    assert available_memory_bytes(proc, meminfo) == 3_000_000 - (2_900_000 - 1_800_000)


class TinyModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.feature_cache = None

    def forward(self, images, targets=None):
        return self.drop(self.norm(self.conv(images))).mean()


def make_batch(n: int) -> Batch:
    return Batch(torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8), torch.zeros(n, dtype=torch.long))


def checker(batch_size: int, step_images: int | None = None, model: nn.Module | None = None):
    """What ``Trainer._check_batch_memory`` reads of a trainer: a loader whose first step holds ``step_images``."""
    model = (model or TinyModel()).eval()
    step_images = batch_size if step_images is None else step_images
    sample = make_batch(min(4, step_images))
    fake = SimpleNamespace(
        model=model,
        device=torch.device("cpu"),
        prep=lambda x: x.float() / 255,
        cfg=SimpleNamespace(train=SimpleNamespace(batch_size=batch_size)),
        train_loader=SimpleNamespace(first_step=lambda n: (step_images, sample)),
        dist=DistInfo(),
        _apply_stage_grads=lambda stage: model.conv.requires_grad_(False) if stage == "freeze conv" else None,
    )
    fake._probing = functools.partial(Trainer._probing, fake)
    return fake, model


def test_a_batch_beyond_the_memory_available_is_refused_in_one_line(monkeypatch):
    monkeypatch.setattr(trainer_module, "available_memory_bytes", lambda: 10 * 2**20)
    fake, _ = checker(100_000)
    # conv output, BN output and dropout mask per image: ≥ 3 × 4 × 8 × 8 × 4 bytes ≈ 3 KiB; 100,000 images
    # need far more than 10 MiB
    with pytest.raises(ConfigError) as info:
        Trainer._check_batch_memory(fake, ["fp32"], "stage")
    message = str(info.value)
    assert message.startswith("train.batch_size=100000 puts 100000 images in each training step")
    assert "(fp32), more than the 10 MiB available; lower train.batch_size to " in message
    fits = int(message.rsplit("batch_size to ", 1)[1].split()[0])
    assert 1000 < fits < 100_000
    fake, _ = checker(fits)
    Trainer._check_batch_memory(fake, ["fp32"], "stage")  # the size it suggests passes


def test_ranks_on_one_host_count_together(monkeypatch):
    monkeypatch.setattr(trainer_module, "available_memory_bytes", lambda: 10 * 2**20)
    fake, _ = checker(2000)
    Trainer._check_batch_memory(fake, ["fp32"], "stage")  # one process: fits
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    with pytest.raises(ConfigError, match="images in each training step of each of 8 processes"):
        Trainer._check_batch_memory(fake, ["fp32"], "stage")


def test_the_check_leaves_the_model_and_the_random_stream_alone(monkeypatch):
    monkeypatch.setattr(trainer_module, "available_memory_bytes", lambda: 2**40)
    fake, model = checker(64)
    model.norm.train()  # a module whose mode differs from its parent's keeps it
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(3)
    Trainer._check_batch_memory(fake, ["fp32", "bf16"], "freeze conv")  # fits: no error
    after_check = torch.rand(3)
    torch.manual_seed(3)
    assert torch.equal(torch.rand(3), after_check)  # the dropout draws were not taken from the run's stream
    assert [m.training for m in model.modules()] == [False, False, True, False]  # modes restored
    assert all(p.requires_grad for p in model.parameters())  # the stage's freezing undone
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key  # BatchNorm statistics untouched


def test_a_frozen_trunk_needs_less_than_a_trained_one(monkeypatch):
    """The stage's frozen parameters save nothing for backward: a batch that fits a linear probe is not refused
    for what training the whole model would need."""
    fake, _ = checker(100_000)
    sizes = []
    monkeypatch.setattr(trainer_module, "readable_bytes", lambda n: sizes.append(n) or "x")
    monkeypatch.setattr(trainer_module, "available_memory_bytes", lambda: 1)
    for stage in ("stage", "freeze conv"):
        with pytest.raises(ConfigError):
            Trainer._check_batch_memory(fake, ["fp32"], stage)
    assert sizes[2] < sizes[0]  # (need, available) per call: the frozen conv's stage needs less


def test_no_check_without_a_measure(monkeypatch):
    monkeypatch.setattr(trainer_module, "available_memory_bytes", lambda: 1)
    fake, _ = checker(3)  # fewer than 4 images in a step: nothing to scale from, never refused
    Trainer._check_batch_memory(fake, ["fp32"], "stage")

    class Broken(TinyModel):
        def forward(self, images, targets=None):
            raise RuntimeError("Expected more than 1 value per channel when training")

    fake, model = checker(64, model=Broken())
    Trainer._check_batch_memory(fake, ["fp32"], "stage")  # a model that cannot be measured: the run goes on
    assert not model.training
    monkeypatch.setattr(trainer_module, "available_memory_bytes", lambda: None)
    fake, _ = checker(10**9)
    Trainer._check_batch_memory(fake, ["fp32"], "stage")  # memory unknown (not Linux): no check
