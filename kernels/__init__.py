"""nnx.kernels: the hot loops, one module per backend.

- `reference.py` (+ `reference_layers.py`): the full kernel table written against `xp`; runs on
  NumPy and CuPy arrays alike, and is the base class of every backend.
- `numba_cpu.py`: Numba-JIT overrides of the hot paths (fused dense+activation, backprop loops).
- `cupy_gpu.py` + `cuda/*.cu`: CuPy/CUDA overrides (fused epilogues, one-launch optimizers).

In the repository this folder sits at the top level as `kernels/`; it installs as `nnx.kernels`.
Nothing here imports numba or cupy at module level except the module of that backend.
"""
