"""nnx.metrics: each metric against a plain NumPy reference (and hand-computed values), over
batches, sequences, sample weights and masks, on every available backend."""

from __future__ import annotations

import math

import numpy as np
import pytest
from nnx.kernels.reference import Ops

import nnx
from nnx import metrics as M
from nnx.errors import InputError, ShapeError, UnknownNameError


def ops_for(backend):
    return nnx.get_ops(backend, dtype="float64")


# -- references (plain NumPy over flattened positions) --------------------------------------
def ref_accuracy(out, labels, w):
    pred = out.argmax(-1).ravel()
    return float(((pred == labels.ravel()) * w.ravel()).sum() / w.sum())


def ref_top_k(out, labels, w, k):
    flat, lab, ww = out.reshape(-1, out.shape[-1]), labels.ravel(), w.ravel()
    hits = []
    for row, y in zip(flat, lab):
        hits.append(sum(1 for s in row if s > row[y]) < k)
    return float((np.array(hits) * ww).sum() / ww.sum())


def ref_macro(out, labels, w, which):
    """scikit-learn's average="macro" with sample weights, written out class by class."""
    pred, lab, ww = out.argmax(-1).ravel(), labels.ravel(), w.ravel()
    keep = ww != 0
    pred, lab, ww = pred[keep], lab[keep], ww[keep]
    scores = []
    for c in sorted(set(pred.tolist()) | set(lab.tolist())):
        tp = ww[(pred == c) & (lab == c)].sum()
        predicted, actual = ww[pred == c].sum(), ww[lab == c].sum()
        p = tp / predicted if predicted else 0.0
        r = tp / actual if actual else 0.0
        f = 2 * p * r / (p + r) if p + r else 0.0
        scores.append({"precision": p, "recall": r, "f1": f}[which])
    return float(np.mean(scores))


def data(shape=(6, 5), classes=4, seed=0):
    rng = np.random.default_rng(seed)
    out = rng.standard_normal((*shape, classes))
    labels = rng.integers(0, classes, shape)
    labels[0] = out[0].argmax(-1)  # some hits for sure
    return out, labels


# -- hand-computed values -------------------------------------------------------------------
def test_hand_computed_classification():
    ops = ops_for("numpy")
    out = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 2.0], [0.0, 2.0, 1.0]])
    y = np.array([0, 1, 1, 2])  # predictions 0, 1, 2, 1: two right
    acc = M.get("accuracy")
    acc.update(ops, out, y)
    assert acc.result() == 0.5
    # class 0: tp 1, pred 1, true 1 -> p 1, r 1; class 1: tp 1, pred 2, true 2 -> p .5, r .5;
    # class 2: tp 0, pred 1, true 1 -> 0, 0.  Macro: p = r = f1 = 0.5.
    for name in ("precision", "recall", "f1"):
        m = M.get(name)
        m.update(ops, out, y)
        assert m.result() == pytest.approx(0.5)
    top2 = M.TopKAccuracy(2)
    top2.update(ops, out, y)
    # sample 2: label 1 scores 0.0, two classes higher -> miss; sample 3: label 2 second -> hit
    assert top2.result() == 0.75


def test_hand_computed_regression():
    ops = ops_for("numpy")
    out, target = np.array([[1.0], [2.0], [4.0]]), np.array([1.0, 0.0, 1.0])  # errors 0, 2, 3
    values = {"mae": 5 / 3, "mse": 13 / 3, "rmse": math.sqrt(13 / 3)}
    for name, expected in values.items():
        m = M.get(name)
        m.update(ops, out, target)
        assert m.result() == pytest.approx(expected, rel=1e-12)
    m = M.get("mae")
    m.update(ops, out, target, sample_weight=np.array([1.0, 0.0, 2.0]))
    assert m.result() == pytest.approx(6 / 3)  # (0*1 + 2*0 + 3*2) / 3


# -- against the references, on every backend ------------------------------------------------
@pytest.mark.parametrize("weighting", ["none", "per_sequence", "per_step", "mask"])
def test_classification_matches_reference(backend, weighting):
    ops = ops_for(backend)
    out, labels = data()
    rng = np.random.default_rng(1)
    w = {"none": None, "per_sequence": rng.random(6),
         "per_step": rng.random((6, 5)),
         "mask": (rng.random((6, 5)) > 0.3).astype(np.float64)}[weighting]
    wfull = np.ones((6, 5)) if w is None else np.broadcast_to(
        w.reshape(w.shape + (1,) * (2 - w.ndim)), (6, 5))
    expected = {
        "accuracy": ref_accuracy(out, labels, wfull),
        "top_k_accuracy": ref_top_k(out, labels, wfull, 5),
        "precision": ref_macro(out, labels, wfull, "precision"),
        "recall": ref_macro(out, labels, wfull, "recall"),
        "f1": ref_macro(out, labels, wfull, "f1"),
    }
    k2 = M.TopKAccuracy(2)
    k2.update(ops, ops.asarray(out), ops.asarray(labels), w)
    assert k2.result() == pytest.approx(ref_top_k(out, labels, wfull, 2), rel=1e-12)
    for name, value in expected.items():
        m = M.get(name)
        m.update(ops, ops.asarray(out), ops.asarray(labels), w)
        assert m.result() == pytest.approx(value, rel=1e-12), name


def test_sequence_counts_every_position():
    """(N, T) targets: accuracy divides by N*T, not N (the issue's language-model bug)."""
    ops = ops_for("numpy")
    out = np.zeros((2, 3, 4))
    out[..., 1] = 1.0  # always predicts class 1
    labels = np.array([[1, 1, 0], [1, 2, 3]])  # 3 of 6 positions right
    m = M.get("accuracy")
    m.update(ops, out, labels)
    assert m.result() == 0.5
    # one-hot targets of the output's shape give the same
    m.reset()
    m.update(ops, out, np.eye(4)[labels])
    assert m.result() == 0.5
    # masking the padding (the last step of sequence 0 and the last two of sequence 1)
    m.reset()
    m.update(ops, out, labels, sample_weight=np.array([[1, 1, 0], [1, 0, 0]]))
    assert m.result() == 1.0


def test_padding_labels_under_a_zero_weight_are_ignored():
    ops = ops_for("numpy")
    out, labels = data((2, 4), classes=3)
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=float)
    padded = labels.copy()
    padded[mask == 0] = -1  # a padding id outside the classes
    for name in ("accuracy", "top_k_accuracy", "precision", "recall", "f1"):
        a, b = M.get(name), M.get(name)
        a.update(ops, out, padded, mask)
        b.update(ops, out, labels, mask)
        assert a.result() == pytest.approx(b.result(), rel=1e-12), name
    with pytest.raises(InputError, match="label -1 out of range for 3 classes"):
        M.get("accuracy").update(ops, out, padded)


@pytest.mark.parametrize("name", ["accuracy", "top_k_accuracy", "precision", "recall", "f1",
                                  "mae", "mse", "rmse"])
def test_batches_accumulate_like_one_batch(backend, name):
    ops = ops_for(backend)
    out, labels = data((9, 3), classes=4, seed=3)
    targets = labels if name not in ("mae", "mse", "rmse") else out[..., ::-1].copy()
    w = np.random.default_rng(2).random((9, 3))
    whole, parts = M.get(name), M.get(name)
    whole.update(ops, ops.asarray(out), ops.asarray(targets), w)
    for s in (slice(0, 2), slice(2, 7), slice(7, 9)):
        parts.update(ops, ops.asarray(out[s]), ops.asarray(targets[s]), w[s])
    assert parts.result() == pytest.approx(whole.result(), rel=1e-12)
    parts.reset()
    assert parts.result() == 0.0
    parts.update(ops, ops.asarray(out), ops.asarray(targets), w)
    assert parts.result() == pytest.approx(whole.result(), rel=1e-12)


def test_regression_matches_reference(backend):
    ops = ops_for(backend)
    rng = np.random.default_rng(4)
    out, target, w = rng.standard_normal((5, 3, 2)), rng.standard_normal((5, 3, 2)), rng.random(5)
    wb = np.broadcast_to(w[:, None, None], out.shape)
    err = out - target
    ref = {"mae": (np.abs(err) * wb).sum() / wb.sum(), "mse": (err**2 * wb).sum() / wb.sum()}
    ref["rmse"] = math.sqrt(ref["mse"])
    for name, value in ref.items():
        m = M.get(name)
        m.update(ops, ops.asarray(out), ops.asarray(target), w)
        assert m.result() == pytest.approx(value, rel=1e-12)
    # Keras: the weighted mean of the per-sample means
    per_sample = np.abs(err).mean(axis=(1, 2))
    m = M.get("mae")
    m.update(ops, ops.asarray(out), ops.asarray(target), w)
    assert m.result() == pytest.approx((per_sample * w).sum() / w.sum(), rel=1e-12)


# -- binary outputs ---------------------------------------------------------------------------
def test_binary_single_column_logits_and_probabilities():
    ops = ops_for("numpy")
    logits = np.array([[2.0], [-1.0], [0.5], [-3.0]])
    y = np.array([1, 0, 0, 1])  # predictions 1, 0, 1, 0: tp 1, fp 1, fn 1
    acc = M.get("acc")
    acc.update(ops, logits, y)
    assert acc.result() == 0.5
    for name in ("precision", "recall", "f1"):
        m = M.get(name)
        m.update(ops, logits, y.reshape(-1, 1))
        assert m.result() == 0.5, name
    # probabilities: threshold 0.5, not 0 (0.3 would be "positive" under the logit threshold)
    probs, y = np.array([[0.9], [0.3], [0.6], [0.2]]), np.array([1, 0, 1, 0])
    default, from_probs = M.get("accuracy"), M.get("accuracy", from_logits=False)
    default.update(ops, probs, y)
    from_probs.update(ops, probs, y)
    assert from_probs.result() == 1.0
    assert default.result() == 0.5  # read as logits, all are positive: 2 of 4 right


def test_binary_multilabel_is_per_element():
    ops = ops_for("numpy")
    out = np.array([[1.0, -1.0, 1.0], [-1.0, -1.0, 1.0]])
    y = np.array([[1, 1, 1], [0, 1, 0]])  # matches: 2 of 3, 1 of 3
    m = M.get("accuracy", binary=True)
    m.update(ops, out, y, sample_weight=np.array([1.0, 3.0]))
    assert m.result() == pytest.approx((2 / 3 * 1 + 1 / 3 * 3) / 4)
    p = M.Precision(binary=True)
    p.update(ops, out, y)  # predicted positives 3, true among them 2
    assert p.result() == pytest.approx(2 / 3)


# -- no host sync on the device path ------------------------------------------------------------
class DeviceLikeOps(Ops):
    """The numpy backend pretending to be a device: any read back to the host fails."""

    on_host = False

    def to_host(self, x):
        raise AssertionError("metric update read a value back to the host")

    def to_float(self, x):
        raise AssertionError("metric update read a value back to the host")


def test_update_keeps_state_on_the_backend():
    ops = DeviceLikeOps(dtype="float64")
    out, labels = data((4, 3))
    for name in M.METRICS:
        m = M.get(name)
        targets = labels if m.kind == "classification" else out
        m.update(ops, out, targets, np.ones((4, 3)))
        m.update(ops, out, targets)
        states = m.state_arrays()
        assert states and all(isinstance(s, np.ndarray) and s.dtype == np.float64
                              for s in states), name
        assert 0.0 <= m.result() or name in ("mae", "mse", "rmse")


@pytest.mark.gpu
def test_cupy_matches_numpy():
    cupy_ops, ref_ops = nnx.get_ops("cupy", dtype="float32"), ops_for("numpy")
    out, labels = data((8, 6), classes=5)
    w = (np.random.default_rng(0).random((8, 6)) > 0.2).astype(np.float32)
    for name in M.METRICS:
        a, b = M.get(name), M.get(name)
        targets = labels if a.kind == "classification" else out
        a.update(cupy_ops, cupy_ops.asarray(out), cupy_ops.asarray(targets), cupy_ops.asarray(w))
        b.update(ref_ops, out.astype(np.float32), targets, w)
        assert all(type(s).__module__.startswith("cupy") for s in a.state_arrays())
        assert a.result() == pytest.approx(b.result(), rel=1e-5), name


# -- names, configs, errors ---------------------------------------------------------------------
def test_names_and_configs():
    assert M.get("acc").name == "acc" and isinstance(M.get("acc"), M.Accuracy)
    assert M.get("accuracy").name == "accuracy"
    assert isinstance(M.get("top_k_accuracy"), M.TopKAccuracy)
    assert M.get("top_k_accuracy").k == 5
    for name, cls in M.METRICS.items():
        m = M.get(name)
        assert isinstance(m, cls)
        again = M.get(M.to_config(m))
        assert type(again) is cls and again.get_config() == m.get_config()
    k3 = M.TopKAccuracy(3, name="top3")
    assert M.get(k3) is k3
    assert M.get(M.to_config(k3)).k == 3
    assert '"accuracy" / "acc"' in M.names() and '"rmse"' in M.names()
    assert not M.get("acc", from_logits=False).from_logits


def test_errors_name_the_metric_and_the_shapes():
    ops = ops_for("numpy")
    with pytest.raises(UnknownNameError, match="unknown metric 'accuracy_score'.*acc, accuracy"):
        M.get("accuracy_score")
    with pytest.raises(ValueError, match="k must be a positive int, got 0"):
        M.TopKAccuracy(0)
    out, labels = data((4, 3))
    with pytest.raises(ShapeError, match=r"'accuracy'.*targets of shape \(4, 3\).*got shape"):
        M.get("accuracy").update(ops, out, labels[:, :2])
    with pytest.raises(ShapeError, match=r"sample_weight of shape \(4,\) or \(4, 3\), got"):
        M.get("accuracy").update(ops, out, labels, np.ones(5))
    with pytest.raises(ShapeError, match=r"'mse'.*targets of the output's shape"):
        M.get("mse").update(ops, out, labels)
    with pytest.raises(ShapeError, match=r"outputs of shape \(N, C\)"):
        M.TopKAccuracy(1).update(ops, np.zeros(3), np.zeros(3, dtype=int))
    f1 = M.get("f1")
    f1.update(ops, out, labels)
    with pytest.raises(ShapeError, match="4 classes .* got 5"):
        f1.update(ops, np.zeros((2, 5)), np.zeros(2, dtype=int))
