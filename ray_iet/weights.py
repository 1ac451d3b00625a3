"""Model weights as dicts of numpy arrays, and their safetensors files.

numpy dicts go through Ray's object store without copies and without pickling torch tensors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

StateDict = dict[str, np.ndarray]


def numpy_state(model: torch.nn.Module) -> StateDict:
    return {name: value.detach().cpu().numpy().copy() for name, value in model.state_dict().items()}


def load_numpy_state(model: torch.nn.Module, state: Mapping[str, np.ndarray]) -> None:
    # Arrays from the object store are read-only; np.array copies them so torch may own the memory.
    tensors = {name: torch.from_numpy(np.array(value)) for name, value in state.items()}
    model.load_state_dict(tensors, strict=True)


def save_tensors(tensors: Mapping[str, np.ndarray], path: Path) -> None:
    save_file({name: np.ascontiguousarray(value) for name, value in tensors.items()}, str(path))


def load_tensors(path: Path) -> StateDict:
    return load_file(str(path))
