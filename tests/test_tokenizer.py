"""Tokenizer: exact round trip on code and maths, byte fallback, errors, batching, pickling."""

import io
import pickle

import numpy as np
import pytest
import sentencepiece as spm

from bon_jax.errors import DataError
from bon_jax.tokenizer import Tokenizer

PYTHON_SRC = (
    "def add(a, b):\n"
    "\t# tab-indented body, trailing spaces follow   \n"
    "\treturn a + b\n"
    "\n"
    "\n"
    "class Point:\n"
    "    def __init__(self, x=0.5, y=-12):\n"
    "        self.x, self.y = x, y  \n"
    "\n"
    "    def norm(self):\n"
    "        return (self.x ** 2 + self.y ** 2) ** 0.5\n"
    'GREETING = "héllo, wörld — ∑ᵢ xᵢ"\n'
)
LATEX = r"We have $\frac{1}{2} + \frac{1}{3} = \frac{5}{6}$, so the answer is \boxed{x^2+1}."
DIGITS = "3141592653 + 2718281828 = 5859874481"


def _corpus():
    lines = [PYTHON_SRC, LATEX, DIGITS]
    for i in range(60):
        lines.append(f"def f{i}(x):\n    return x * {i} + {i * 7 % 13}\n\n")
        lines.append(rf"\frac{{{i}}}{{{i + 1}}} \cdot x^{{{i % 5}}} = \boxed{{{i * i}}}")
        lines.append(f"for k in range({i}):\n\ttotal += k  # running sum\n")
    return lines


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(_corpus(), 400, model_type="bpe")


@pytest.mark.parametrize(
    "text",
    [
        PYTHON_SRC,
        LATEX,
        DIGITS,
        r"\boxed{\frac{-b \pm \sqrt{b^2-4ac}}{2a}}",
        "   leading spaces and trailing   ",
        "\n\n\nonly newlines\n\n",
        "\t\t\t",
        " ",
        "",
        "a\r\nwindows line\r\n",
    ],
)
def test_round_trip_exact(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_digits_are_split(tok):
    pieces = [tok.id_to_piece(i) for i in tok.encode("12345")]
    assert pieces == ["1", "2", "3", "4", "5"]


@pytest.mark.parametrize("text", ["漢字 🙂 Ωmega", "nul\x00byte", "a▁b ▁▁ c▁", "▁"])
def test_unseen_characters_round_trip_through_bytes(tok, text):
    ids = tok.encode(text)
    assert tok.unk_id not in ids
    assert tok.decode(ids) == text


def test_unseen_character_uses_byte_pieces(tok):
    pieces = [tok.id_to_piece(i) for i in tok.encode("🙂")]
    assert pieces == ["<0xF0>", "<0x9F>", "<0x99>", "<0x82>"]


def test_special_ids_and_framing(tok):
    assert (tok.pad_id, tok.eos_id, tok.bos_id, tok.unk_id) == (0, 1, 2, 3)
    assert [tok.id_to_piece(i) for i in range(4)] == ["<pad>", "</s>", "<s>", "<unk>"]
    assert tok.vocab_size == 400
    body = tok.encode("x = 1")
    assert tok.encode("x = 1", add_bos=True, add_eos=True) == [2, *body, 1]


def test_decode_drops_pad_and_stops_at_eos(tok):
    a, b = tok.encode("return a"), tok.encode(" + b")
    ids = [0, 0, 2, *a, 1, *b, 1, 0]
    assert tok.decode(ids) == "return a"
    assert tok.decode(ids, stop_at_eos=False) == "return a + b"
    assert tok.decode(np.array(ids, np.int32)) == "return a"
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([5, tok.vocab_size])


def test_user_defined_symbols_are_single_tokens():
    tok = Tokenizer.train(_corpus(), 400, user_defined_symbols=("<answer>", "</answer>"))
    ids = tok.encode("<answer>42</answer>")
    assert [tok.id_to_piece(i) for i in ids] == ["<answer>", "4", "2", "</answer>"]
    assert tok.decode(ids) == "<answer>42</answer>"


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_training_is_deterministic(model_type):
    a = Tokenizer.train(_corpus(), 340, model_type=model_type)
    b = Tokenizer.train(_corpus(), 340, model_type=model_type)
    assert a.to_bytes() == b.to_bytes()
    assert a.decode(a.encode(PYTHON_SRC)) == PYTHON_SRC


def test_train_refuses_bad_arguments():
    with pytest.raises(ValueError, match="model_type"):
        Tokenizer.train(_corpus(), 400, model_type="word")
    with pytest.raises(ValueError, match="vocab_size=262"):
        Tokenizer.train(_corpus(), 262)
    with pytest.raises(ValueError, match="non-empty"):
        Tokenizer.train(["", ""], 300)
    with pytest.raises(ValueError, match="max_sentence_length"):
        Tokenizer.train(["x" * 100], 300, max_sentence_length=50)


def test_save_load_and_from_bytes(tok, tmp_path):
    path = tmp_path / "sub" / "tok.model"
    tok.save(path)
    for other in (
        Tokenizer.load(path),
        Tokenizer.load(str(path)),
        Tokenizer.from_bytes(tok.to_bytes()),
    ):
        assert other.encode(PYTHON_SRC) == tok.encode(PYTHON_SRC)
        assert other.vocab_size == tok.vocab_size


def test_bad_path_and_corrupt_file_name_the_path(tmp_path):
    missing = tmp_path / "nope.model"
    with pytest.raises(DataError, match="nope.model"):
        Tokenizer.load(missing)
    with pytest.raises(DataError, match=str(tmp_path)):
        Tokenizer.load(tmp_path)  # a directory
    corrupt = tmp_path / "corrupt.model"
    corrupt.write_bytes(b"\x00\xffthis is not a protobuf\x13\x37" * 10)
    with pytest.raises(DataError, match="corrupt.model.*not a valid sentencepiece model"):
        Tokenizer.load(corrupt)
    empty = tmp_path / "empty.model"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="empty.model"):
        Tokenizer.load(empty)
    with pytest.raises(DataError, match="serialized model"):
        Tokenizer.from_bytes(b"garbage")


def test_foreign_special_ids_are_refused(tmp_path):
    writer = io.BytesIO()
    # sentencepiece's own default order: unk=0, bos=1, eos=2, no pad.
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()), model_writer=writer, vocab_size=100, minloglevel=2
    )
    path = tmp_path / "foreign.model"
    path.write_bytes(writer.getvalue())
    with pytest.raises(DataError, match="foreign.model.*special ids"):
        Tokenizer.load(path)


def test_encode_batch_buckets_and_padding(tok):
    texts = ["x", "return a + b", PYTHON_SRC[:40]]
    bodies = [tok.encode(t) for t in texts]
    longest = max(len(b) for b in bodies) + 1
    assert 8 < longest <= 32
    for side in ("left", "right"):
        tokens_BT, lengths_B = tok.encode_batch(
            texts, buckets=(8, 32, 64), pad_side=side, add_bos=True
        )
        assert tokens_BT.dtype == np.int32 and lengths_B.dtype == np.int32
        assert tokens_BT.shape == (3, 32)
        np.testing.assert_array_equal(lengths_B, [len(b) + 1 for b in bodies])
        for row, body, n in zip(tokens_BT, bodies, lengths_B, strict=True):
            real = row[-n:] if side == "left" else row[:n]
            pad = row[:-n] if side == "left" else row[n:]
            assert list(real) == [tok.bos_id, *body]
            assert (pad == tok.pad_id).all()
        assert tok.decode_batch(tokens_BT) == texts


def test_encode_batch_smallest_bucket_and_no_buckets(tok):
    tokens_BT, lengths_B = tok.encode_batch(["a", "b c"], buckets=(4, 16))
    assert tokens_BT.shape == (2, 4)
    tokens_BT, lengths_B = tok.encode_batch(["a", "b c"], buckets=None)
    assert tokens_BT.shape == (2, int(lengths_B.max()))
    tokens_BT, lengths_B = tok.encode_batch([], buckets=(4, 16))
    assert tokens_BT.shape == (0, 4) and lengths_B.shape == (0,)


def test_encode_batch_too_long_refused_or_truncated_from_left(tok):
    text = DIGITS  # one token per digit, so lengths are predictable
    body = tok.encode(text)
    with pytest.raises(ValueError, match="row 1 has .* over the limit of 16"):
        tok.encode_batch(["1", text], buckets=(8, 16))
    with pytest.raises(ValueError, match="row 0"):
        tok.encode_batch([text], buckets=(8, 64), max_len=12)
    tokens_BT, lengths_B = tok.encode_batch(
        ["1", text],
        buckets=(8, 64),
        max_len=12,
        truncate=True,
        add_bos=True,
        add_eos=True,
        pad_side="right",
    )
    assert tokens_BT.shape == (2, 12)
    assert list(tokens_BT[1]) == [tok.bos_id, *body[-10:], tok.eos_id]
    np.testing.assert_array_equal(lengths_B, [3, 12])
    assert tok.decode(tokens_BT[1]) == text[-len(tok.decode(body[-10:])) :]


def test_pickle_round_trip(tok):
    clone = pickle.loads(pickle.dumps(tok))
    assert clone.to_bytes() == tok.to_bytes()
    for text in (PYTHON_SRC, LATEX, "a▁b 🙂"):
        assert clone.encode(text) == tok.encode(text)
    a, _ = clone.encode_batch([LATEX, DIGITS])
    b, _ = tok.encode_batch([LATEX, DIGITS])
    np.testing.assert_array_equal(a, b)
