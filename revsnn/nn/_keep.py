"""How a layer holds a tensor it is given (tau, v_threshold, a converted source's parameters)."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


def keep(module: nn.Module, name: str, value: Any) -> None:
    """Set ``module.<name>``: an ``nn.Parameter`` as itself (the optimizer may hold it), any
    other tensor as a buffer copy (it follows ``.to()`` and the state_dict), anything else (a
    number, None) as a plain attribute."""
    if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter):
        module.register_buffer(name, value.detach().clone())
    else:
        setattr(module, name, value)
