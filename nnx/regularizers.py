"""L1 / L2 weight penalties, per layer: `Dense(..., kernel_regularizer=L2(1e-4))`.

The penalty is added to the reported loss and its gradient to the parameter's gradient, on the
backend (`ops.l1_l2_penalty`, `ops.add_l1_l2_grad`). For decoupled weight decay use AdamW."""

from __future__ import annotations

from .errors import unknown


class L1L2:
    """An L1 and L2 weight penalty: l1 * sum|W| + l2 * sum W^2 (`l1`, `l2` >= 0)."""
    def __init__(self, l1: float = 0.0, l2: float = 0.0):
        for arg, v in (("l1", l1), ("l2", l2)):
            if not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"regularizer {arg} must be a non-negative number, got {v!r}")
        self.l1, self.l2 = float(l1), float(l2)

    def penalty(self, ops, W):
        """The penalty of weights `W`, computed by backend `ops`."""
        return ops.l1_l2_penalty(W, self.l1, self.l2)

    def add_grad(self, ops, grad, W) -> None:
        """Add the penalty's gradient with respect to `W` to `grad`, in place, with backend `ops`.
        Returns None."""
        ops.add_l1_l2_grad(grad, W, self.l1, self.l2)

    def get_config(self) -> dict:
        """{'l1': ..., 'l2': ...}, for checkpoints (`get` takes it back)."""
        return {"l1": self.l1, "l2": self.l2}

    def __repr__(self) -> str:
        return f"L1L2(l1={self.l1}, l2={self.l2})"


def L1(l1: float = 0.01) -> L1L2:  # noqa: N802 - Keras' spelling
    """An L1 penalty of weight `l1`: `L1L2(l1=l1)`."""
    return L1L2(l1=l1)


def L2(l2: float = 0.01) -> L1L2:  # noqa: N802
    """An L2 penalty of weight `l2`: `L1L2(l2=l2)`."""
    return L1L2(l2=l2)


def get(value):
    """None, an L1L2, a dict {'l1':..,'l2':..} (from a checkpoint) or 'l1'/'l2' (0.01)."""
    if value is None or isinstance(value, L1L2):
        return value
    if isinstance(value, dict):
        extra = set(value) - {"l1", "l2"}
        if extra:
            raise ValueError(f"regularizer config has unknown keys {sorted(extra)}")
        return L1L2(**value)
    if value in ("l1", "l2"):
        return L1(0.01) if value == "l1" else L2(0.01)
    raise unknown("regularizer", value, ["l1", "l2"])


def to_config(reg):
    """`reg.get_config()`, or None for no regularizer."""
    return None if reg is None else reg.get_config()
