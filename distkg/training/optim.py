"""torch's Adagrad without the 3 s import of torch._dynamo on a process's first step.

torch.optim wraps add_param_group, step, zero_grad and the state-dict methods in guards that
import torch._dynamo on first call (to stay out of torch.compile graphs). distkg never compiles
its training step, so those guards only cost start-up time: about 3 s a process on the 2-core
machines, paid by every student of a grid. The classes here call the same methods unwrapped;
the updates and the state dicts are torch's own.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch.optim import Optimizer


def _bare(method: Callable) -> Callable:
    return getattr(method, "__wrapped__", method)


def _without_dynamo_guards(base: type[Optimizer]) -> type[Optimizer]:
    class Bare(base):  # type: ignore[misc, valid-type]
        __doc__ = f"torch.optim.{base.__name__}, its methods called without the torch._dynamo guards."

        def add_param_group(self, param_group: dict[str, Any]) -> None:
            _bare(Optimizer.add_param_group)(self, param_group)

        def zero_grad(self, set_to_none: bool = True) -> None:
            _bare(Optimizer.zero_grad)(self, set_to_none)

        def state_dict(self) -> dict[str, Any]:
            return _bare(Optimizer.state_dict)(self)

        def load_state_dict(self, state_dict: dict[str, Any]) -> None:
            _bare(Optimizer.load_state_dict)(self, state_dict)

        @torch.no_grad()
        def step(self, closure: Callable | None = None):
            return _bare(base.step)(self, closure)

    Bare.__name__ = Bare.__qualname__ = base.__name__
    return Bare


# torch's sparse Adagrad step (trainer.sparse_rows) builds its sparse tensors from valid indices; the
# warning that invariant checks are off says nothing about them
warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")
Adagrad = _without_dynamo_guards(torch.optim.Adagrad)
