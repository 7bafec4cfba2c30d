"""distkg's optimisers are torch's (same updates, same state dicts) without importing torch._dynamo."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distkg.training import optim

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["Adagrad"])
def test_same_updates_and_state_as_torch(name):
    torch.manual_seed(0)
    start = torch.randn(5, 3)
    ours_p, ref_p = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    ours, ref = getattr(optim, name)([ours_p], lr=0.1), getattr(torch.optim, name)([ref_p], lr=0.1)
    for step in range(4):
        for p, o in ((ours_p, ours), (ref_p, ref)):
            (p.sin() * (step + 1)).sum().backward()
            o.step()
            o.zero_grad()
    assert torch.equal(ours_p, ref_p)
    fresh = getattr(optim, name)([torch.nn.Parameter(start.clone())], lr=0.1)
    fresh.load_state_dict(ref.state_dict())  # checkpoints written by either load into the other
    for k, v in ref.state_dict()["state"][0].items():
        assert torch.equal(fresh.state_dict()["state"][0][k], v), k


def test_a_training_step_does_not_import_dynamo():
    probe = ("import sys, torch\n"
             "from distkg.training.optim import Adagrad\n"
             "for cls in (Adagrad,):\n"
             "    p = torch.nn.Parameter(torch.ones(2)); o = cls([p], lr=0.1)\n"
             "    p.sum().backward(); o.step(); o.zero_grad(); o.load_state_dict(o.state_dict())\n"
             "print('torch._dynamo' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", probe], env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
