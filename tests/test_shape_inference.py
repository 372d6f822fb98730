"""Shape inference (issue 15, item 5): input sizes given as None are inferred from
`input_shape=`, `model.build(shape)` or the first batch; a lazily built model initializes like
one built up front; before it is built, what needs parameters raises NotBuiltError saying how
to build it; checkpoints hold the resolved sizes; summary shows every output shape."""

from __future__ import annotations

import numpy as np
import pytest

import nnx
from nnx.errors import ShapeError
from nnx.layers.base import NotBuiltError


def convnet(sizes, **kw):
    """Keras's "Simple MNIST convnet" on 12x12 images, with explicit or inferred sizes."""
    c1, c2, d = sizes
    return nnx.Sequential([
        nnx.Conv2D(c1, 4, 3, activation="relu"), nnx.MaxPool2D(2),
        nnx.Conv2D(c2, 6, 3, activation="relu"), nnx.Flatten(), nnx.Dropout(0.5),
        nnx.Dense(d, 10, "softmax"),
    ], **kw)


def test_inferred_sizes_equal_explicit_ones_and_initialize_the_same():
    explicit = convnet((1, 4, 6 * 3 * 3), seed=5)
    shaped = convnet((None, None, None), seed=5, input_shape=(1, 12, 12))
    lazy = convnet((None, None, None), seed=5)
    assert explicit.built and shaped.built and not lazy.built
    x = np.random.default_rng(0).random((4, 1, 12, 12)).astype(np.float32)
    out = lazy.predict(x)  # built from the first batch
    assert lazy.built and lazy.input_shape == (1, 12, 12)
    for a, b, c in zip(explicit.get_weights(), shaped.get_weights(), lazy.get_weights(),
                       strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(out, explicit.predict(x))
    def configs(model):
        return [{k: v for k, v in layer.get_config().items() if k != "name"}
                for layer in model.layers]

    assert configs(lazy) == configs(explicit)  # what a checkpoint saves: the resolved sizes


def test_not_built_errors_say_how_to_build():
    model = nnx.Sequential([nnx.Dense(None, 3), nnx.Dense(None, 2)])
    for call in (model.count_params, model.get_weights, model.get_buffers,
                 lambda: model.set_weights([]), lambda: model.summary(print_fn=None),
                 lambda: model.save("unused.npz")):
        with pytest.raises(NotBuiltError, match=r"is not built yet: Dense 'dense_\d+': "
                                                r"in_features.*input_shape=.*model\.build"):
            call()
    assert isinstance(NotBuiltError("x"), RuntimeError)
    model.build((5,))
    assert model.count_params() == 5 * 3 + 3 + 3 * 2 + 2


def test_compile_before_build_allocates_the_optimizer_state_at_build(rng):
    x = rng.standard_normal((16, 5)).astype(np.float32)
    y = rng.integers(0, 2, 16)
    lazy = nnx.Sequential([nnx.Dense(None, 4, "relu"), nnx.Dense(None, 2)], seed=1)
    lazy.compile(nnx.Adam(0.01), "softmax_cross_entropy")
    assert not lazy.built
    loss = lazy.train_step(x, y)
    ref = nnx.Sequential([nnx.Dense(5, 4, "relu"), nnx.Dense(4, 2)], seed=1)
    ref.compile(nnx.Adam(0.01), "softmax_cross_entropy")
    assert loss == pytest.approx(ref.train_step(x, y))
    assert lazy.optimizer.state["m"].shape == ref.optimizer.state["m"].shape
    for a, b in zip(lazy.get_weights(), ref.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_wrong_input_shape_names_the_layer_and_leaves_the_layers_unbuilt():
    layers = [nnx.Dense(None, 8), nnx.Reshape((2, 4)), nnx.LSTM(None, 3), nnx.Dense(7, 2)]
    with pytest.raises(ShapeError, match=r"Dense 'dense_\d+': expected an input with "
                                         r"in_features=7, got input shape \(None, 3\)"):
        nnx.Sequential(layers, input_shape=(5,))
    assert layers[0].in_features is None and layers[2].input_size is None  # forgotten
    model = nnx.Sequential(layers)
    with pytest.raises(ShapeError, match="expected an input with in_features=7"):
        model.build((5,))
    layers[3] = nnx.Dense(3, 2)
    assert nnx.Sequential(layers, input_shape=(5,)).count_params() == \
        5 * 8 + 8 + 4 * 12 + 3 * 12 + 12 + 3 * 2 + 2
    with pytest.raises(ShapeError, match=r"Dense 'dense_\d+': expected an input with "
                                         r"in_features=6, got input shape \(None, 4\)"):
        nnx.Sequential([nnx.Dense(6, 3)], input_shape=(4,))
    with pytest.raises(ValueError, match="input_shape must be a tuple of positive ints"):
        nnx.Sequential([nnx.Dense(None, 3)], input_shape=(0, 3))


@pytest.mark.parametrize("make,shape,sizes", [
    (lambda: nnx.Conv1D(None, 5, 3, padding="same"), (3, 10), {"in_channels": 3}),
    (lambda: nnx.LSTM(None, 4, return_sequences=True), (6, 3), {"input_size": 3}),
    (lambda: nnx.GRU(None, 4), (6, 3), {"input_size": 3}),
    (lambda: nnx.SimpleRNN(None, 4), (6, 3), {"input_size": 3}),
    (lambda: nnx.LayerNorm(), (6, 3), {"normalized_shape": (3,)}),
    (lambda: nnx.BatchNorm1d(None), (3, 7), {"num_features": 3}),
    (lambda: nnx.BatchNorm2d(None), (3, 4, 4), {"num_features": 3}),
    (lambda: nnx.MultiHeadSelfAttention(None, 2, causal=True), (5, 4), {"embed_dim": 4}),
    (lambda: nnx.PositionalEmbedding(8), (5, 4), {"dim": 4}),
    (lambda: nnx.TransformerEncoderBlock(None, 2, 8), (5, 4), {"embed_dim": 4}),
    (lambda: nnx.Residual(nnx.Dense(None, 4)), (5, 4), {}),
    (lambda: nnx.Parallel(nnx.Dense(None, 2), nnx.Dense(None, 3)), (4,), {}),
])
def test_layers_infer_their_input_size(make, shape, sizes, rng):
    layer = make()
    assert layer.missing_sizes()
    model = nnx.Model(layer, seed=3, dtype="float64", input_shape=shape)
    for k, v in sizes.items():
        assert getattr(layer, k) == v
    assert not layer.missing_sizes()
    explicit = nnx.Model(nnx.layers.layer_from_dict(nnx.layers.layer_to_dict(layer)), seed=3,
                         dtype="float64")
    for a, b in zip(model.get_weights(), explicit.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    x = rng.standard_normal((2, *shape))
    assert model.predict(x).shape[1:] == tuple(layer.output_shape(shape))


def test_mismatched_attention_width_is_a_shape_error():
    with pytest.raises(ShapeError, match=r"divisible by num_heads \(3\), got input shape "
                                         r"\(None, 5, 4\)"):
        nnx.Model(nnx.MultiHeadSelfAttention(None, 3), input_shape=(5, 4))


def test_summary_shows_every_output_shape():
    model = convnet((None, None, None))
    text = model.summary(input_shape=(1, 12, 12), print_fn=None)
    for shape in ("(None, 4, 10, 10)", "(None, 4, 5, 5)", "(None, 6, 3, 3)", "(None, 54)",
                  "(None, 10)"):
        assert shape in text, text
    assert f"Total params: {model.count_params():,}" in text
    assert "conv2d" in text and "Dropout" in text


def test_checkpoint_holds_the_resolved_sizes(tmp_path, rng):
    model = nnx.Sequential([nnx.Embedding(9, 4), nnx.LSTM(None, 5, return_sequences=True),
                            nnx.LayerNorm(), nnx.Dense(None, 9)])
    model.compile("adam", "softmax_cross_entropy")
    ids = rng.integers(0, 9, (4, 6))
    model.fit(ids, ids, epochs=1, verbose=0)
    model.save(tmp_path / "m.npz")
    again = nnx.load(tmp_path / "m.npz")
    assert again.layers[1].input_size == 4 and again.layers[2].normalized_shape == (5,)
    assert again.layers[3].in_features == 5
    np.testing.assert_array_equal(again.predict(ids), model.predict(ids))


def test_decoding_works_on_an_inferred_model(rng):
    model = nnx.Sequential([nnx.Embedding(7, 8), nnx.PositionalEmbedding(16),
                            nnx.TransformerEncoderBlock(None, 2, 16, causal=True),
                            nnx.LayerNorm(), nnx.Dense(None, 7)], input_shape=(16,), seed=1)
    prompt = rng.integers(0, 7, (2, 3))
    cached = model.generate(prompt, 5, top_k=1)
    plain = model.generate(prompt, 5, top_k=1, use_cache=False)
    np.testing.assert_array_equal(cached, plain)


def test_numba_backend_builds_lazily(rng):
    if "numba" not in nnx.available_backends():
        pytest.skip("numba is not installed")
    x = rng.standard_normal((8, 1, 6, 6)).astype(np.float32)
    a = nnx.Sequential([nnx.Conv2D(None, 2, 3), nnx.Flatten(), nnx.Dense(None, 3)],
                       backend="numba", seed=4)
    b = nnx.Sequential([nnx.Conv2D(1, 2, 3), nnx.Flatten(), nnx.Dense(32, 3)], seed=4)
    np.testing.assert_allclose(a.predict(x), b.predict(x), rtol=1e-5, atol=1e-6)
