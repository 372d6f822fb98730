"""nnx.text: CharTokenizer, next_token_windows, the bundled corpus; the charlm zoo models."""

from __future__ import annotations

import numpy as np
import pytest

import nnx
from nnx.errors import InputError, ShapeError
from nnx.generate import generate
from nnx.text import (
    CharTokenizer,
    next_token_windows,
    sample_text,
    split_text,
    tokenizer_from_config,
)


# -- CharTokenizer ---------------------------------------------------------------------------
def test_tokenizer_round_trip_and_sorted_vocabulary():
    tok = CharTokenizer()
    assert tok.fit("hello world") is tok
    assert tok.chars == " dehlorw" and tok.vocab_size == 8
    ids = tok.encode("low hello")
    assert ids.dtype == np.int64 and ids.shape == (9,)
    assert ids.tolist() == [4, 5, 7, 0, 3, 2, 4, 4, 5]
    assert tok.decode(ids) == "low hello"
    assert tok.decode([]) == "" and tok.encode("").shape == (0,)
    assert tok.decode(np.array([1, 2], dtype=np.int32)) == "de"
    # the same text gives the same ids, whatever the order it was seen in
    assert CharTokenizer().fit("dlrow olleh") == tok


def test_tokenizer_refuses_unknown_characters_and_ids():
    tok = CharTokenizer().fit("abc")
    with pytest.raises(InputError, match=r"character 'z' \(U\+007A\) at index 2 .* 3 characters"):
        tok.encode("abz")
    with pytest.raises(InputError, match=r"id 3 out of range \(expected 0 <= id < 3"):
        tok.decode([0, 3])
    with pytest.raises(InputError, match="id -1 out of range"):
        tok.decode([-1])
    with pytest.raises(InputError, match="integers"):
        tok.decode([0.5])
    with pytest.raises(ShapeError, match="row by row"):
        tok.decode([[0, 1]])
    with pytest.raises(InputError, match="expected a str"):
        tok.encode([1, 2])
    with pytest.raises(RuntimeError, match="fit"):
        CharTokenizer().encode("a")
    with pytest.raises(InputError, match="non-empty str"):
        CharTokenizer().fit("")


def test_tokenizer_config_round_trip_is_json():
    import json

    tok = CharTokenizer().fit("Hello, world!\n\tÄ€")
    cfg = json.loads(json.dumps(tok.to_config()))
    back = tokenizer_from_config(cfg)
    assert back == tok and back.decode(tok.encode("world€")) == "world€"
    with pytest.raises(InputError, match="unknown tokenizer type 'bpe'"):
        tokenizer_from_config({"type": "bpe"})
    with pytest.raises(InputError, match="repeats"):
        CharTokenizer.from_config({"type": "char", "chars": "aab"})


# -- next_token_windows ----------------------------------------------------------------------
def test_windows_are_next_token_shifts():
    ids = np.arange(10)
    x, y = next_token_windows(ids, 4)
    assert x.shape == y.shape == (6, 4) and x.dtype == y.dtype == np.int64
    np.testing.assert_array_equal(x[0], [0, 1, 2, 3])
    np.testing.assert_array_equal(y[0], [1, 2, 3, 4])
    np.testing.assert_array_equal(y[:, :-1], x[:, 1:])
    np.testing.assert_array_equal(x[-1], [5, 6, 7, 8])
    np.testing.assert_array_equal(y[-1], [6, 7, 8, 9])
    x, y = next_token_windows(ids, 4, stride=3)  # starts 0, 3 (6 would need ids up to 10)
    np.testing.assert_array_equal(x[:, 0], [0, 3])
    assert x.shape == (2, 4)
    x, y = next_token_windows(np.arange(11), 4, stride=3)
    np.testing.assert_array_equal(x[:, 0], [0, 3, 6])
    x[0, 0] = 99  # copies, not views of the ids
    x2, _ = next_token_windows(np.arange(11), 4, stride=3)
    assert x2[0, 0] == 0


def test_windows_bad_arguments():
    with pytest.raises(ShapeError, match="need 5 ids, got 4"):
        next_token_windows(np.arange(4), 4)
    with pytest.raises(ValueError, match="stride"):
        next_token_windows(np.arange(10), 4, stride=0)
    with pytest.raises(ValueError, match="seq_len"):
        next_token_windows(np.arange(10), 0)
    with pytest.raises(ShapeError, match=r"\(L,\)"):
        next_token_windows(np.zeros((2, 5), np.int64), 2)
    with pytest.raises(InputError, match="integers"):
        next_token_windows(np.zeros(5), 2)


# -- the corpus and the zoo --------------------------------------------------------------------
def test_bundled_corpus_and_split():
    text = sample_text()
    assert len(text) > 100_000 and "nnx" in text
    tok = CharTokenizer().fit(text)
    assert 50 < tok.vocab_size < 200
    train, val = split_text(text, 0.1)
    assert train + val == text and abs(len(val) - len(text) / 10) < 2
    with pytest.raises(ValueError, match="val_fraction"):
        split_text(text, 1.0)


@pytest.mark.parametrize("name", ["charlm", "char_transformer"])
def test_charlm_zoo_models_map_ids_to_per_position_logits(name):
    zoo = nnx.models.get(name)
    assert (zoo.INPUT, zoo.TARGET, zoo.LOSS) == ("text", "next_tokens", "softmax_cross_entropy")
    tok, (xtr, ytr), (xva, yva) = zoo.load_data("abcdefgh" * 20, seq_len=8, val_fraction=0.25)
    assert tok.vocab_size == 8 and xtr.shape[1] == 8 and xva.shape[1] == 8
    np.testing.assert_array_equal(ytr[:, :-1], xtr[:, 1:])
    small = {"embed_dim": 8, "depth": 1, "num_heads": 2} if name == "char_transformer" else \
        {"embed_dim": 4, "hidden": 6}
    model = zoo.build(vocab_size=tok.vocab_size, seq_len=8, **small)
    assert model.predict(xtr[:3]).shape == (3, 8, 8)
    out = generate(model, xtr[0, :2], 5)
    assert out.shape == (7,)
    with pytest.raises(nnx.UnknownNameError, match="arch"):
        nnx.models.get("charlm").build(arch="gru")


# -- the command line: nnx train --model charlm --text PATH; nnx generate CHECKPOINT ----------
def _parse(module, argv):
    import argparse

    parser = argparse.ArgumentParser(prog="nnx")
    sub = parser.add_subparsers(dest="command")
    p = module.add_parser(sub, "help") if hasattr(module, "add_parser") else None
    if p is None:  # train_text: the flags it adds to `nnx train`
        p = sub.add_parser("train")
        for flag, kw in (("--model", {}), ("--backend", {}), ("--hidden", {"type": None}),
                         ("--dropout", {"type": float}), ("--save", {}),
                         ("--optimizer", {"default": "adam"}), ("--lr", {"type": float}),
                         ("--epochs", {"type": int}), ("--batch-size", {"type": int})):
            p.add_argument(flag, **kw)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--quiet", action="store_true")
        p.add_argument("--distributed", action="store_true")
        module.add_arguments(p)
    return parser.parse_args(argv)


def test_cli_trains_on_a_text_file_and_generates_from_the_checkpoint(tmp_path, capsys):
    from nnx.commands import generate as generate_cmd
    from nnx.commands import train_text
    from nnx.commands._args import UsageError

    text = tmp_path / "tiny.txt"
    text.write_text("the cat sat on the mat. " * 40)
    ckpt = tmp_path / "out" / "lm.npz"
    args = _parse(train_text, ["train", "--model", "charlm", "--text", str(text), "--seq-len",
                               "16", "--epochs", "1", "--batch-size", "16", "--lr", "0.01",
                               "--save", str(ckpt), "--quiet"])
    args.hidden = (16,)
    zoo = nnx.models.get("charlm")
    assert train_text.is_text_model(zoo) and not train_text.is_text_model(nnx.models.get("mlp"))
    assert train_text.run(args, zoo) == 0
    out = capsys.readouterr().out
    assert "nats/char" in out and "saved to" in out
    loaded = nnx.load(ckpt)
    assert loaded.metadata["tokenizer"] == {"type": "char", "chars": " .acehmnost"}

    args = _parse(generate_cmd, ["generate", str(ckpt), "--prompt", "the ", "--tokens", "20",
                                 "--top-k", "3", "--seed", "1", "--samples", "2"])
    assert generate_cmd.run(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "--- sample 1 ---" and lines[1].startswith("the ") and len(lines[1]) == 24
    again = _parse(generate_cmd, ["generate", str(ckpt), "--prompt", "the ", "--tokens", "20",
                                  "--top-k", "3", "--seed", "1", "--samples", "2"])
    generate_cmd.run(again)
    assert capsys.readouterr().out.splitlines() == lines  # seeded: the same text

    with pytest.raises(UsageError, match=r"--prompt: .*'Z'"):
        generate_cmd.run(_parse(generate_cmd, ["generate", str(ckpt), "--prompt", "Zebra"]))
    plain = tmp_path / "plain.npz"
    loaded.save(plain, metadata={})
    with pytest.raises(UsageError, match="no tokenizer"):
        generate_cmd.run(_parse(generate_cmd, ["generate", str(plain)]))
    with pytest.raises(UsageError, match="no such file"):
        generate_cmd.run(_parse(generate_cmd, ["generate", str(tmp_path / "missing.npz")]))
    with pytest.raises(SystemExit):  # argparse refuses a bad value while parsing
        _parse(generate_cmd, ["generate", str(ckpt), "--top-p", "1.5"])
    with pytest.raises(UsageError, match="--text: model 'mlp' trains on MNIST"):
        train_text.refuse_text_flags(args_with_text(str(text)), "mlp")


def args_with_text(path):
    import argparse

    return argparse.Namespace(text=path, seq_len=None)
