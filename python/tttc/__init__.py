"""tttc's compiled sequence-mixing layers (TTT, Mamba, attention) inside Python frameworks.

``tttc.torch`` has PyTorch modules and custom ops with autograd; ``tttc.jax`` (needs jax) the
layer as a function for ``jax.jit`` and ``jax.grad``. Both call the same compiled graphs: the
layer's forward pass and its vector-Jacobian product, derived by tttc's one autodiff. docs/python.md
describes them.
"""

from ._native import Error, Layer

__all__ = ["Error", "Layer"]
