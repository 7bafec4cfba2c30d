"""Benchmark: start-up of a training command apart from dataset parsing (imports, accelerator,
optimiser, one step), and whether torch._dynamo was imported.

    OMP_NUM_THREADS=1 python scripts/bench_startup.py [LABEL]
"""
import sys
import time

t = time.perf_counter()
import torch
t1 = time.perf_counter()
import distkg.distill.runner as runner
import distkg.training.trainer as tr
from distkg.config import load_config
t2 = time.perf_counter()
cfg = load_config("configs/train/ttranse-yago11k-25.yaml")
acc = tr.make_accelerator(cfg)
m = torch.nn.Linear(3, 2)
o = tr.make_optimizer(cfg, list(m.parameters()))
m, o = acc.prepare(m, o)
acc.backward(m(torch.ones(1, 3)).sum()); o.step(); o.zero_grad()
t3 = time.perf_counter()
print("%s: import torch %.2f s, the rest of distkg's imports %.2f s, accelerator + optimiser + first step %.2f s, torch._dynamo imported: %s"
      % ((sys.argv[1] if len(sys.argv) > 1 else "this checkout"), t1 - t, t2 - t1, t3 - t2, "torch._dynamo" in sys.modules))
