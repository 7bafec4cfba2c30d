"""trainer.average_gradients in 2 processes of a gloo group on 127.0.0.1 (what Ray Train sets up for
student workers): a sparse row gradient (the entity table under a sampled loss) is averaged by
gathering the rows each rank touched, equal to the mean of the dense gradients, and the dense
parameters beside it are averaged as before."""

from __future__ import annotations

import os

import torch

ROWS = {0: [1, 4, 4, 7], 1: [4, 2]}  # rank 0 touches row 4 twice (an uncoalesced gradient), both touch it


def _grads(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(rank)
    rows = torch.tensor(ROWS[rank])
    sparse = torch.sparse_coo_tensor(rows.unsqueeze(0), torch.randn(len(rows), 3, generator=g), (9, 3))
    return sparse, torch.randn(5, generator=g)


def _average_in_group(rank: int, world: int, port: int, out) -> None:
    import torch.distributed as dist

    from distkg.training.trainer import average_gradients

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        table, other = torch.nn.Parameter(torch.zeros(9, 3)), torch.nn.Parameter(torch.zeros(5))
        table.grad, other.grad = _grads(rank)
        average_gradients([table, other], world)
        torch.save({"table": table.grad, "other": other.grad}, out / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_sparse_rows_are_averaged_by_gathering_the_touched_rows(tmp_path):
    import torch.multiprocessing as mp

    from distkg.runtime.cluster import free_port

    mp.spawn(_average_in_group, args=(2, free_port("127.0.0.1"), tmp_path), nprocs=2, join=True)
    want_table = sum(_grads(r)[0].to_dense() for r in (0, 1)) / 2
    want_other = sum(_grads(r)[1] for r in (0, 1)) / 2
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert got["table"].is_sparse and sorted(got["table"].coalesce().indices()[0].tolist()) == [1, 2, 4, 7]
        torch.testing.assert_close(got["table"].to_dense(), want_table)
        torch.testing.assert_close(got["other"], want_other)
