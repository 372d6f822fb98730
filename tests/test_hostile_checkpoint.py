"""Hostile checkpoints (issue 14): crafted files end in CheckpointError at bounded memory (a
1 GiB member is never read; a header declaring a huge layer allocates nothing), and random damage
(seeded byte flips, truncations, junk header values) never escapes as another exception.
Saving without losing anything is tested in test_checkpoint_saving.py."""

from __future__ import annotations

import io
import json
import sys
import zipfile
import zlib

import numpy as np
import pytest
from checkpoint_helpers import (
    deflated_zeros,
    header_npy,
    header_of,
    load_peak,
    members_of,
    npy,
    npy_header,
    raw_zip,
    rewrite,
    small_model,
    write_zip,
)

import nnx
from nnx import checkpoint
from nnx.errors import CheckpointError, InputError

GiB = 2**30


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "m.npz"
    small_model().save(path)
    return path


# -- memory: members the header does not name are never read -------------------------------------
@pytest.fixture(scope="module")
def gib_of_zeros():
    return deflated_zeros(npy_header((GiB // 4,)), GiB)


def test_unknown_gib_member_is_refused_without_reading_it(saved, tmp_path, gib_of_zeros):
    payload, crc, size = gib_of_zeros
    entries = [(f"{k}.npy", 0, zlib.crc32(v), len(v), v) for k, v in members_of(saved).items()]
    entries.append(("junk.npy", zipfile.ZIP_DEFLATED, crc, size, payload))
    path = raw_zip(tmp_path / "bomb.npz", entries)
    assert path.stat().st_size < 2 * 2**20
    with zipfile.ZipFile(path) as z:
        assert z.getinfo("junk.npy").file_size > GiB  # a real, readable 1 GiB member
    err, peak = load_peak(path)
    assert "members its header does not name: ['junk']" in str(err)
    assert peak < 8 * 2**20


@pytest.mark.parametrize("member", ["w/0000", "opt/m", "buf/bn/running_var", "__nnx__"])
def test_named_gib_member_is_refused_from_its_npy_header(saved, tmp_path, gib_of_zeros, member):
    payload, crc, size = gib_of_zeros
    if member == "__nnx__":  # a 1 GiB header: same data, as uint8
        payload, crc, size = deflated_zeros(npy_header((GiB,), "|u1"), GiB)
    entries = [(f"{k}.npy", 0, zlib.crc32(v), len(v), v)
               for k, v in members_of(saved).items() if k != member]
    entries.append((f"{member}.npy", zipfile.ZIP_DEFLATED, crc, size, payload))
    err, peak = load_peak(raw_zip(tmp_path / "bomb.npz", entries))
    assert f"({GiB // 4},)" in str(err) or "invalid header member" in str(err)
    assert peak < 8 * 2**20


def test_huge_layer_declared_with_small_arrays_is_refused_before_allocating(saved, tmp_path):
    def huge(h):
        h["model"]["net"]["config"]["layers"][0]["config"].update(in_features=12000,
                                                                   out_features=12000)
        h["model"]["net"]["config"]["layers"][1]["config"].update(num_features=12000)
        h["model"]["net"]["config"]["layers"][2]["config"].update(in_features=12000)

    # the header and the .npy headers agree on (12000, 12000); the data is 96 bytes
    fake = {"w/0000": npy_header((12000, 12000)) + b"\0" * 96}
    err, peak = load_peak(rewrite(saved, tmp_path / "huge.npz", huge, fake))
    assert "w/0000" in str(err) and "holds 96 bytes" in str(err)
    assert peak < 8 * 2**20
    # .npy header honest about the small array: refused by the architecture's shape
    err, peak = load_peak(rewrite(saved, tmp_path / "huge2.npz", huge))
    assert "expects shape (12000, 12000), got (6, 4)" in str(err)
    assert peak < 8 * 2**20


def test_member_claiming_two_terabytes_is_refused(saved, tmp_path):
    fake = {"w/0000": npy_header((2 * 10**12,)) + b"\0" * 16}
    err, peak = load_peak(rewrite(saved, tmp_path / "tb.npz", replace=fake))
    assert "declares shape (2000000000000,)" in str(err)
    assert peak < 8 * 2**20


def test_central_directory_with_too_many_members_is_refused(saved, tmp_path, monkeypatch):
    entries = [(f"x{i}.npy", npy(np.zeros(1))) for i in range(20)]
    path = rewrite(saved, tmp_path / "many.npz", extra=entries)
    monkeypatch.setattr(checkpoint, "MAX_MEMBERS", 10)
    with pytest.raises(CheckpointError, match=r"declares \d+ members .* limits are 10 members"):
        nnx.load(path)


# -- crafted containers and headers --------------------------------------------------------------
def test_duplicate_header_member(saved, tmp_path):
    path = rewrite(saved, tmp_path / "dup.npz", extra=[("__nnx__.npy", header_npy({}))])
    with pytest.raises(CheckpointError, match="has the member '__nnx__' twice"):
        nnx.load(path)


@pytest.mark.parametrize("flag, match", [(0x1, "is encrypted"), (0x40, "is encrypted"),
                                         (0x20, "unsupported zip features")])
def test_encrypted_or_patched_members(saved, tmp_path, flag, match):
    data = bytearray(saved.read_bytes())
    for sig, at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # local and central headers
        i = data.find(sig)
        while i >= 0:
            data[i + at] |= flag
            i = data.find(sig, i + 4)
    path = tmp_path / "enc.npz"
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=match):
        nnx.load(path)


@pytest.mark.parametrize("method", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_unsupported_compression(saved, tmp_path, method):
    entries = [(k + ".npy", v) for k, v in members_of(saved).items()]
    path = write_zip(tmp_path / "bz.npz", entries, method)
    with pytest.raises(CheckpointError, match="unsupported compression"):
        nnx.load(path)


def test_deflated_checkpoint_loads_and_corrupt_deflate_data_is_refused(saved, tmp_path):
    entries = [(k + ".npy", v) for k, v in members_of(saved).items()]
    good = write_zip(tmp_path / "deflated.npz", entries, zipfile.ZIP_DEFLATED)
    ref = nnx.load(saved)
    for a, b in zip(ref.get_weights(), nnx.load(good).get_weights()):
        np.testing.assert_array_equal(a, b)
    data = bytearray(good.read_bytes())
    start = data.find(b"PK\x03\x04", data.find(b"w/0000.npy") - 40)
    data[start + 60: start + 70] = b"\xff" * 10  # inside the deflate stream of w/0000
    bad = tmp_path / "bad.npz"
    bad.write_bytes(bytes(data))
    with pytest.raises(CheckpointError):
        nnx.load(bad)


def test_plain_npy_and_other_files(tmp_path):
    np.save(tmp_path / "plain.npy", np.zeros(3))
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        nnx.load(tmp_path / "plain.npy")
    (tmp_path / "empty.npz").write_bytes(b"")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        nnx.load(tmp_path / "empty.npz")


def test_json_nested_5000_deep(saved, tmp_path):
    deep = "[" * 5000 + "]" * 5000
    err, peak = load_peak(rewrite(saved, tmp_path / "deep.npz",
                                  replace={"__nnx__": header_npy(deep)}))
    assert "nested more than" in str(err)

    def nested_config(h):  # deep inside an otherwise valid header
        h["model"]["net"]["config"]["layers"][0]["config"]["name"] = {}
    path = rewrite(saved, tmp_path / "deep2.npz", nested_config)
    text = json.dumps(header_of(path)).replace('"name": {}', '"name": ' + "[" * 5000 + "]" * 5000)
    rewrite(saved, path, replace={"__nnx__": header_npy(text)})
    with pytest.raises(CheckpointError, match="nested more than"):
        nnx.load(path)


def test_chain_nested_500_deep(saved, tmp_path):
    net = {"class": "Chain", "config": {"layers": []}}
    node = net
    for _ in range(500):
        inner = {"class": "Chain", "config": {"layers": []}}
        node["config"]["layers"].append(inner)
        node = inner
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(10000)  # only for json.dumps of the crafted header
    try:
        text = json.dumps({**header_of(saved), "model": {**header_of(saved)["model"],
                                                          "net": net}})
    finally:
        sys.setrecursionlimit(limit)
    path = rewrite(saved, tmp_path / "chain.npz", replace={"__nnx__": header_npy(text)})
    with pytest.raises(CheckpointError, match="nested more than"):
        nnx.load(path)


BAD_INTEGERS = [-1, 1e30, "Infinity", "-Infinity", "NaN", 10**30, 2.5, True, "3", None]


@pytest.mark.parametrize("value", BAD_INTEGERS)
@pytest.mark.parametrize("field", ["optimizer_step", "seed", "in_features", "version",
                                   "step_size"])
def test_bad_values_in_integer_fields(tmp_path, field, value):
    model = nnx.Sequential([nnx.Dense(6, 3)], backend="numpy")
    model.compile(nnx.SGD(nnx.StepDecay(0.1, 2)), "mse")
    model.save(tmp_path / "m.npz")
    marker = 987654321

    def edit(h):
        if field == "optimizer_step":
            h["optimizer_step"] = marker
        elif field == "seed":
            h["model"]["seed"] = marker
        elif field == "in_features":
            h["model"]["net"]["config"]["layers"][0]["config"]["in_features"] = marker
        elif field == "version":
            h["version"] = marker
        else:
            h["optimizer"]["lr"]["step_size"] = marker

    path = rewrite(tmp_path / "m.npz", tmp_path / "x.npz", edit)
    literal = value if isinstance(value, str) and value.endswith(("Infinity", "NaN")) \
        else json.dumps(value)
    text = json.dumps(header_of(path)).replace(str(marker), literal)
    rewrite(path, path, replace={"__nnx__": header_npy(text)})
    if (field, value) in (("seed", None), ("step_size", 10**30)):
        nnx.load(path)  # a random seed; a step size that never decays: both valid
        return
    with pytest.raises(CheckpointError):
        nnx.load(path)


def test_negative_optimizer_step_is_refused_not_a_zero_division(saved, tmp_path):
    path = rewrite(saved, tmp_path / "s.npz", lambda h: h.update(optimizer_step=-1))
    with pytest.raises(CheckpointError, match="optimizer_step"):
        nnx.load(path)


# -- arrays: dtype kinds, finiteness, ranges ------------------------------------------------------
@pytest.mark.parametrize("bad", [
    np.array([["1.5"] * 4] * 6),
    np.zeros((6, 4), np.complex64),
    np.zeros((6, 4), "datetime64[s]"),
    np.zeros((6, 4), np.int32),
    np.zeros((6, 4), bool),
    np.array([[None] * 4] * 6, dtype=object),
])
def test_weights_of_the_wrong_kind_are_refused(saved, tmp_path, bad):
    path = rewrite(saved, tmp_path / "k.npz", replace={"w/0000": npy(bad)})
    with pytest.raises(CheckpointError, match="dtype"):
        nnx.load(path)


@pytest.mark.parametrize("member, value, match", [
    ("w/0000", np.inf, "NaN or inf"),
    ("w/0001", np.nan, "NaN or inf"),
    ("buf/bn/running_var", -1.0, "must be >= 0"),
    ("buf/bn/running_mean", np.nan, "NaN or inf"),
    ("opt/v", -1e-3, "must be >= 0"),
    ("opt/m", np.inf, "NaN or inf"),
])
def test_non_finite_and_out_of_range_arrays_are_refused(saved, tmp_path, member, value, match):
    arr = np.load(io.BytesIO(members_of(saved)[member])).copy()
    arr.flat[0] = value
    path = rewrite(saved, tmp_path / "v.npz", replace={member: npy(arr)})
    with pytest.raises(CheckpointError, match=match):
        nnx.load(path)


def test_negative_running_var_gave_nan_outputs_before(saved):
    """Why running_var is checked: a negative variance turns predictions into NaN."""
    model = nnx.load(saved)
    bufs = model.get_buffers()
    bufs["bn/running_var"][:] = -1
    with pytest.raises(InputError, match=r"bn/running_var must be >= 0"):
        model.set_buffers(bufs)


# -- fuzz: random damage always ends in CheckpointError ------------------------------------------
def _fuzz(path, tmp_path, seed, cases):
    ref = nnx.load(path)
    data = path.read_bytes()
    rng = np.random.default_rng(seed)
    outcome = {"error": 0, "same": 0}
    target = tmp_path / "fuzz.npz"
    for i in range(cases):
        b = bytearray(data)
        if i % 4 == 3:
            b = b[: int(rng.integers(0, len(b)))]
        else:
            for _ in range(int(rng.integers(1, 4))):
                b[int(rng.integers(0, len(b)))] ^= 1 << int(rng.integers(0, 8))
        target.write_bytes(bytes(b))
        try:
            got = nnx.load(target)
        except CheckpointError:
            outcome["error"] += 1
            continue
        # the damage hit bytes nothing reads (padding, local-header copies): the same model
        assert [type(layer) for layer in got.layers] == [type(layer) for layer in ref.layers]
        for a, w in zip(ref.get_weights(), got.get_weights(), strict=True):
            np.testing.assert_array_equal(a, w)
        outcome["same"] += 1
    return outcome


@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_fuzzed_checkpoints_end_in_checkpoint_error(saved, tmp_path, method):
    entries = [(k + ".npy", v) for k, v in members_of(saved).items()]
    path = write_zip(tmp_path / "src.npz", entries, method)
    outcome = _fuzz(path, tmp_path, seed=14 + method, cases=300)
    assert outcome["error"] > 250  # nearly every flip hits a checked byte (CRC, headers)


def test_fuzzed_headers_end_in_checkpoint_error(saved, tmp_path):
    """Structured damage: random header values replaced by junk (CRC intact)."""
    import copy

    header = header_of(saved)

    def paths(o, pre=()):
        yield pre
        items = o.items() if isinstance(o, dict) else enumerate(o) if isinstance(o, list) else ()
        for k, v in items:
            yield from paths(v, (*pre, k))

    every = [p for p in paths(header) if p]
    junk = [-1, 0, 1e30, 10**30, 2**63, 1.5, "x", "", None, [], {}, True, [[[]]],
            {"class": "Chain", "config": {}}, "Dense", "float16", "int32"]
    rng = np.random.default_rng(1414)
    members = members_of(saved)
    loaded = 0
    for _ in range(150):
        h = copy.deepcopy(header)
        for _ in range(int(rng.integers(1, 3))):
            where = every[int(rng.integers(0, len(every)))]
            node = h
            try:
                for k in where[:-1]:
                    node = node[k]
                node[where[-1]] = copy.deepcopy(junk[int(rng.integers(0, len(junk)))])
            except (KeyError, IndexError, TypeError):
                pass
        members["__nnx__"] = header_npy(h)
        path = write_zip(tmp_path / "h.npz", [(k + ".npy", v) for k, v in members.items()])
        try:
            nnx.load(path)
            loaded += 1  # a harmless field (name, backend, metadata) changed
        except CheckpointError:
            pass
    assert loaded < 75
