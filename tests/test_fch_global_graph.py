"""FCH's ``global_graph`` under DDP (seed 000, issue 15): two gloo processes with 8 samples each take the
same SGD steps as one process with the 16-sample batch — graph, median bandwidth, structure term and
gradients all span the global batch — while the per-process graph (the default) does not.

Both runs use one small MLP backbone + FCH head (no dropout, fp32) and three SGD steps on fixed data.
The processes are started with ``torch.multiprocessing`` (as torchrun would, but without a CLI run), so
the test isolates the head's gather from the rest of the trainer.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from imgcls.models.heads.fch import FCHHead
from imgcls.runtime.batch import Batch
from imgcls.runtime.distributed import gather_rows, gather_rows_with_grad

WORLD, LOCAL, STEPS = 2, 8, 3
CASES = [("knn", 2), ("class_label", 1)]  # RBF weights (median bandwidth) + top-k; gathered labels


class Net(nn.Module):
    """A small MLP backbone + the FCH head, called like :class:`~imgcls.models.classifier.Classifier` (which
    is not imported: the spawned processes then skip importing timm)."""

    def __init__(self, head: FCHHead) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 12))
        self.head = head

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None):
        return self.head(self.backbone(x), targets if self.head.training else None)


def make_model(adjacency: str, order: int, global_graph: bool) -> Net:
    torch.manual_seed(0)
    head = FCHHead(
        12,
        3,
        adjacency=adjacency,
        order=order,
        knn_k=3,
        dropout=0.0,
        graph_dropout=0.0,
        structure_weight=0.5,
        memory_size=0,
        global_graph=global_graph,
    )
    return Net(head)


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    y = torch.arange(WORLD * LOCAL) % 3
    x = torch.randn(WORLD * LOCAL, 6, generator=g) + y[:, None].float()
    return x, y


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, wrapped: nn.Module | None = None) -> dict:
    wrapped = wrapped or model
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    model.train()
    for _ in range(STEPS):
        out = wrapped(x, y)
        terms = model.head.loss(out, Batch(images=x, targets=y))
        loss = sum(terms.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        x, y = data()
        part = slice(rank * LOCAL, (rank + 1) * LOCAL)
        results = {}
        for adjacency, order in CASES:
            for global_graph in (True, False):
                model = make_model(adjacency, order, global_graph)
                ddp = nn.parallel.DistributedDataParallel(model)
                results[(adjacency, global_graph)] = train(model, x[part], y[part], ddp)
        # the gather helpers on uneven shares: rows in rank order, gradient back to the owner only
        rows = torch.full((rank + 1, 2), float(rank), requires_grad=True)
        gathered, start = gather_rows_with_grad(rows)
        (gathered * torch.arange(1.0, 4.0)[:, None]).sum().backward()
        results["uneven"] = (gathered.detach(), start, rows.grad.clone(), gather_rows(torch.tensor([rank])))
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory) -> list[dict]:
    tmp = tmp_path_factory.mktemp("fch_ddp")
    mp.start_processes(_worker, args=(str(tmp / "init"), str(tmp)), nprocs=WORLD, start_method="spawn")
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def max_diff(a: dict, b: dict) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].numel())


@pytest.mark.parametrize(("adjacency", "order"), CASES)
def test_global_graph_two_processes_match_one_process_of_the_global_batch(ddp_results, adjacency, order):
    x, y = data()
    init = make_model(adjacency, order, True).state_dict()
    single = train(make_model(adjacency, order, True), x, y)  # one process: global_graph is a no-op
    two = ddp_results[0][(adjacency, True)]
    assert max_diff(two, ddp_results[1][(adjacency, True)]) == 0.0  # DDP keeps the replicas identical
    assert max_diff(single, init) > 1e-2  # the steps moved the weights
    assert max_diff(two, single) < 1e-5
    # the per-process graph (default) is a different computation: 8-node graphs, local structure term
    assert max_diff(ddp_results[0][(adjacency, False)], single) > 1e-3


def test_gather_rows_handles_uneven_shares_and_returns_gradients_to_their_owner(ddp_results):
    for rank, result in enumerate(ddp_results):
        gathered, start, grad, ranks = result["uneven"]
        assert torch.equal(gathered, torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]))
        assert start == [0, 1][rank]
        assert torch.equal(ranks, torch.tensor([0, 1]))
        # every rank's loss Σ_i (i+1)·row_i reaches the owner: gradient = WORLD × (i+1) for its rows
        expected = torch.tensor([[1.0], [2.0], [3.0]])[start : start + rank + 1].expand(rank + 1, 2) * WORLD
        assert torch.equal(grad, expected)


def test_global_graph_is_a_no_op_without_a_process_group():
    x, y = data()
    on, off = make_model("rbf", 1, True), make_model("rbf", 1, False)
    out_on, out_off = on(x, y), off(x, y)
    assert torch.equal(out_on.logits, out_off.logits)
    assert "global_embeddings" not in out_on.extras
