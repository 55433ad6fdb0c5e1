"""The parameter-holding base class: PyTorch-style names, state_dict round trips."""
from __future__ import annotations

import numpy as np


class Module:
    """Anything with `parameters() -> {name: Tensor}` gets state_dict/load_state_dict/zero_grad."""

    def parameters(self) -> dict:
        raise NotImplementedError

    def state_dict(self):
        return {k: v.data.copy() for k, v in self.parameters().items()}

    def load_state_dict(self, state):
        # torch tensors are accepted as they are, so weights move over without a conversion step
        state = {k: (v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v))
                 for k, v in state.items()}
        params = self.parameters()
        missing, extra = sorted(set(params) - set(state)), sorted(set(state) - set(params))
        if missing or extra:
            raise KeyError(f"{type(self).__name__}.load_state_dict: missing {missing}, "
                           f"unexpected {extra}")
        for k, v in state.items():
            p = params[k]
            if v.shape != p.shape:
                raise ValueError(f"{type(self).__name__}.load_state_dict: {k} has shape "
                                 f"{list(v.shape)}, the model expects {list(p.shape)}")
            if v.dtype != p.dtype:
                raise TypeError(f"{type(self).__name__}.load_state_dict: {k} is {v.dtype}, the "
                                f"model is {p.dtype} (convert explicitly)")
        for k, v in state.items():   # only after every check passed: no half-loaded model
            params[k].data = v.copy()

    def zero_grad(self):
        for p in self.parameters().values():
            p.grad = None

    def num_parameters(self):
        return sum(p.size for p in self.parameters().values())
