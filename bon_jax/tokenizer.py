"""A SentencePiece tokenizer that round-trips code and maths exactly, trained in memory.

Special ids follow Gemma: pad=0, eos=1, bos=2, unk=3. Training settings make
`decode(encode(s)) == s` for every string `s`:

- identity normalisation and `remove_extra_whitespaces=False`: nothing is folded or NFKC-mapped,
  so tabs, trailing spaces, runs of blank lines and `\\r` survive;
- `add_dummy_prefix=False`: no space is invented at the start;
- byte fallback: characters never seen in training become UTF-8 byte pieces instead of `<unk>`;
- `split_digits=True`: numbers are spelled digit by digit, which keeps arithmetic learnable.

SentencePiece represents a space as the meta symbol U+2581 ('▁') and turns every '▁' back into a
space on decode, so a literal '▁' in the text would come back as ' '. `encode` therefore spells a
literal '▁' with its three UTF-8 byte pieces, which decode to the character itself.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Sequence

import numpy as np
import sentencepiece as spm
from etils import epath

from bon_jax.errors import DataError

PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3
DEFAULT_BUCKETS = tuple(2**k for k in range(4, 14))  # 16 .. 8192
_META_SPACE = "\u2581"


class Tokenizer:
    """Wraps a `sentencepiece.SentencePieceProcessor`; pickles as its serialized model proto."""

    def __init__(self, serialized: bytes, *, source: str = "<serialized model>"):
        """Prefer `train`, `load` or `from_bytes`. `source` names the model in error messages."""
        self._serialized = bytes(serialized)
        self._source = source
        self._sp = _processor_from_bytes(self._serialized, source)
        self._check_special_ids()
        self._meta_space_ids = [self._byte_id(b) for b in _META_SPACE.encode("utf-8")]

    # ----------------------------------------------------------------------------------------------
    # Construction, persistence, pickling.

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int,
        *,
        model_type: str = "bpe",
        user_defined_symbols: Sequence[str] = (),
        character_coverage: float = 0.9995,
        hard_vocab_limit: bool = True,
        max_sentence_length: int = 1 << 16,
        num_threads: int = 1,
        seed: int = 0,
    ) -> Tokenizer:
        """Trains a model in memory; each text is one training "sentence" and may hold newlines.

        `vocab_size` counts the 4 special ids and the 256 byte pieces, so it must exceed 260 plus
        the number of distinct characters kept by `character_coverage`. With
        `hard_vocab_limit=False` it is an upper bound (useful on tiny corpora). Training is
        deterministic for the same inputs: one thread and a fixed random seed. Texts longer than
        `max_sentence_length` bytes are refused, not skipped.
        """
        if model_type not in ("bpe", "unigram"):
            raise ValueError(f"model_type must be 'bpe' or 'unigram', got {model_type!r}")
        texts = [t for t in texts if t]
        if not texts:
            raise ValueError("Tokenizer.train needs at least one non-empty text")
        for i, t in enumerate(texts):
            # SentencePiece silently drops over-long sentences; a hole in the vocabulary is worse.
            n_bytes = len(t.encode("utf-8"))
            if n_bytes > max_sentence_length:
                raise ValueError(
                    f"training text {i} is {n_bytes} bytes, over max_sentence_length="
                    f"{max_sentence_length}; split it or raise max_sentence_length"
                )
        writer = io.BytesIO()
        spm.set_random_generator_seed(seed)
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(texts),
                model_writer=writer,
                vocab_size=vocab_size,
                model_type=model_type,
                user_defined_symbols=list(user_defined_symbols),
                character_coverage=character_coverage,
                hard_vocab_limit=hard_vocab_limit,
                max_sentence_length=max_sentence_length,
                num_threads=num_threads,
                normalization_rule_name="identity",
                remove_extra_whitespaces=False,
                add_dummy_prefix=False,
                byte_fallback=True,
                split_digits=True,
                allow_whitespace_only_pieces=True,
                pad_id=PAD_ID,
                eos_id=EOS_ID,
                bos_id=BOS_ID,
                unk_id=UNK_ID,
                input_sentence_size=0,
                shuffle_input_sentence=False,
                minloglevel=2,
            )
        except RuntimeError as e:
            raise ValueError(f"sentencepiece training failed (vocab_size={vocab_size}): {e}") from e
        return cls(writer.getvalue(), source="<trained in memory>")

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        """Loads a `.model` file (any `etils.epath` path). Raises DataError naming the path."""
        path = epath.Path(path)
        try:
            serialized = path.read_bytes()
        except (OSError, ValueError) as e:  # epath raises FileNotFoundError, IsADirectoryError, ...
            raise DataError(path, f"cannot read sentencepiece model: {e}") from e
        return cls(serialized, source=str(path))

    @classmethod
    def from_gguf(cls, path: str | os.PathLike) -> Tokenizer:
        """The SentencePiece tokenizer rebuilt from the vocabulary inside a GGUF file (llama.cpp's
        `tokenizer.ggml.model == 'llama'`, i.e. a SentencePiece model): see `sentencepiece_from_vocab`."""
        from bon_jax.models.checkpoints.gguf_file import GGUFFile  # the optional `gguf` package

        f = GGUFFile(path)
        kind = f.field("tokenizer.ggml.model")
        if kind != "llama":
            raise DataError(f.path, f"tokenizer.ggml.model is {kind!r}; only SentencePiece ('llama') is supported")
        pieces = f.field("tokenizer.ggml.tokens")
        scores = f.field("tokenizer.ggml.scores")
        types = f.field("tokenizer.ggml.token_type")
        if pieces is None or scores is None or types is None:
            raise DataError(f.path, "GGUF lacks tokenizer.ggml.tokens / scores / token_type")
        specials = {name: f.field(f"tokenizer.ggml.{name}_token_id") for name in ("padding", "eos", "bos", "unknown")}
        proto = sentencepiece_from_vocab(
            pieces, scores, types, add_dummy_prefix=bool(f.field("tokenizer.ggml.add_space_prefix", False)),
            pad_id=specials["padding"], eos_id=specials["eos"], bos_id=specials["bos"], unk_id=specials["unknown"])
        return cls(proto, source=f"{f.path} (GGUF vocabulary)")

    @classmethod
    def from_bytes(cls, serialized: bytes) -> Tokenizer:
        """Builds a tokenizer from a serialized `ModelProto` (the bytes of a `.model` file)."""
        return cls(serialized)

    def to_bytes(self) -> bytes:
        """The serialized `ModelProto`, as in a `.model` file."""
        return self._serialized

    def save(self, path: str | os.PathLike) -> None:
        """Writes the `.model` file to `path`, creating parent directories."""
        path = epath.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self._serialized)

    def __getstate__(self) -> bytes:
        return self._serialized

    def __setstate__(self, serialized: bytes) -> None:
        self.__init__(serialized, source="<unpickled model>")

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, source={self._source!r})"

    # ----------------------------------------------------------------------------------------------
    # Vocabulary.

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def pad_id(self) -> int:
        return PAD_ID

    @property
    def eos_id(self) -> int:
        return EOS_ID

    @property
    def bos_id(self) -> int:
        return BOS_ID

    @property
    def unk_id(self) -> int:
        return UNK_ID

    def id_to_piece(self, token_id: int) -> str:
        return self._sp.id_to_piece(int(token_id))

    def piece_to_id(self, piece: str) -> int:
        """The id of `piece`, or `unk_id` when the vocabulary lacks it."""
        return self._sp.piece_to_id(piece)

    # ----------------------------------------------------------------------------------------------
    # Encoding and decoding.

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Token ids of `text`, optionally framed by bos / eos."""
        ids = self._encode_body(text)
        return [BOS_ID] * add_bos + ids + [EOS_ID] * add_eos

    def decode(self, ids, *, stop_at_eos: bool = True) -> str:
        """Text of a 1-D id sequence (list, numpy or jax array).

        pad and bos are dropped wherever they are (so left- or right-padded rows decode the same).
        With `stop_at_eos` the text ends at the first eos; otherwise eos ids are dropped.
        """
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        if stop_at_eos and EOS_ID in ids:
            ids = ids[: ids.index(EOS_ID)]
        ids = [i for i in ids if i not in (PAD_ID, BOS_ID, EOS_ID)]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"ids out of range [0, {self.vocab_size}): {bad[:8]}")
        return self._sp.decode(ids)

    def decode_batch(self, ids_BT, *, stop_at_eos: bool = True) -> list[str]:
        """`decode` of each row of a [B, T] array (or list of lists)."""
        return [self.decode(row, stop_at_eos=stop_at_eos) for row in ids_BT]

    def encode_batch(
        self,
        texts: Sequence[str],
        *,
        buckets: Sequence[int] | None = DEFAULT_BUCKETS,
        pad_side: str = "left",
        add_bos: bool = False,
        add_eos: bool = False,
        max_len: int | None = None,
        truncate: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Encodes and pads a batch to a static width.

        Returns `(tokens_BT, lengths_B)`, both int32 numpy; `lengths_B` counts each row's non-pad
        tokens. `T` is the smallest bucket that holds the longest row, so jitted consumers see few
        distinct shapes; `buckets=None` pads to the longest row exactly. `max_len` caps the width:
        buckets above it are dropped and `max_len` itself becomes the last bucket. Without
        `max_len` the largest bucket is the cap (no cap when `buckets=None` too).

        A row longer than the cap is refused with a ValueError naming the row, unless
        `truncate=True`: then its body is cut from the left (the end of a prompt is what the model
        continues) while bos / eos stay. `pad_side='left'` right-aligns the rows, as a decoder
        prompt wants; 'right' left-aligns them.
        """
        if pad_side not in ("left", "right"):
            raise ValueError(f"pad_side must be 'left' or 'right', got {pad_side!r}")
        widths = _bucket_widths(buckets, max_len)
        cap = widths[-1] if widths else max_len  # None: no cap at all
        rows = [self._encode_body(t) for t in texts]
        frame = int(add_bos) + int(add_eos)
        if cap is not None:
            if cap <= frame:
                raise ValueError(f"max_len={cap} leaves no room for text after bos/eos")
            for i, body in enumerate(rows):
                if len(body) + frame <= cap:
                    continue
                if not truncate:
                    raise ValueError(
                        f"row {i} has {len(body) + frame} tokens, over the limit of {cap} "
                        f"(max_len={max_len}, largest bucket={max(buckets) if buckets else None}); "
                        "pass truncate=True to keep its last tokens"
                    )
                rows[i] = body[len(body) + frame - cap :]
        rows = [[BOS_ID] * add_bos + body + [EOS_ID] * add_eos for body in rows]
        lengths_B = np.array([len(r) for r in rows], dtype=np.int32)
        longest = int(lengths_B.max(initial=0))
        if widths:
            width = next(w for w in widths if w >= longest)
        else:
            width = longest
        tokens_BT = np.full((len(rows), width), PAD_ID, dtype=np.int32)
        for i, row in enumerate(rows):
            if pad_side == "left":
                tokens_BT[i, width - len(row) :] = row
            else:
                tokens_BT[i, : len(row)] = row
        return tokens_BT, lengths_B

    # ----------------------------------------------------------------------------------------------
    # Internals.

    def _encode_body(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"expected str, got {type(text).__name__}")
        if _META_SPACE not in text:
            return self._sp.encode(text)
        ids: list[int] = []
        for k, part in enumerate(text.split(_META_SPACE)):
            if k:
                ids.extend(self._meta_space_ids)
            if part:
                ids.extend(self._sp.encode(part))
        return ids

    def _byte_id(self, byte: int) -> int:
        piece = f"<0x{byte:02X}>"
        token_id = self._sp.piece_to_id(piece)
        if token_id == UNK_ID or not self._sp.is_byte(token_id):
            raise DataError(self._source, "model lacks byte-fallback pieces; use Tokenizer.train")
        return token_id

    def _check_special_ids(self) -> None:
        found = (self._sp.pad_id(), self._sp.eos_id(), self._sp.bos_id(), self._sp.unk_id())
        expected = (PAD_ID, EOS_ID, BOS_ID, UNK_ID)
        if found != expected:
            raise DataError(
                self._source, f"special ids (pad, eos, bos, unk) are {found}, expected {expected}"
            )


def sequence_batch(tokenizer, prompts: Sequence[str], completions: Sequence[str], width: int) -> dict:
    """Encodes pairs as `[bos] prompt completion [eos]`, right-padded with pad to `width` (a static bucket).

    Returns `tokens_BT` (int32), `valid_BT` (real tokens), `target_BT` (the completion and its eos: the
    tokens a teacher-forced loss trains) and `truncated_B`.

    Rows longer than `width` lose the end of their completion (and its eos, so they teach no stop);
    `truncated_B` counts them so callers can report it.
    """
    B = len(prompts)
    tokens = np.zeros((B, width), np.int32)
    target = np.zeros((B, width), bool)
    truncated = np.zeros((B,), bool)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        prompt_ids = [tokenizer.bos_id] + tokenizer.encode(p)
        comp_ids = tokenizer.encode(c) + [tokenizer.eos_id]
        row = (prompt_ids + comp_ids)[:width]
        truncated[i] = len(prompt_ids) + len(comp_ids) > width
        tokens[i, : len(row)] = row
        target[i, len(prompt_ids) : len(row)] = True
    return {"tokens_BT": tokens, "valid_BT": tokens != 0, "target_BT": target, "truncated_B": truncated}


def sentencepiece_from_vocab(
    pieces: Sequence[str],
    scores: Sequence[float],
    types: Sequence[int],
    *,
    add_dummy_prefix: bool = False,
    pad_id: int | None = PAD_ID,
    eos_id: int | None = EOS_ID,
    bos_id: int | None = BOS_ID,
    unk_id: int | None = UNK_ID,
) -> bytes:
    """A serialized SentencePiece BPE `ModelProto` from a vocabulary (Gemma's: pieces, merge scores and
    piece types as GGUF stores them, whose type codes are SentencePiece's: 1 normal, 2 unknown,
    3 control, 4 user-defined, 5 unused, 6 byte). The piece at `unk_id` becomes the UNKNOWN piece.

    Encoding settings are Gemma's: identity normalisation (no NFKC), whitespace kept as it is
    (`remove_extra_whitespaces=False`) and spelled with the meta symbol, no dummy prefix (unless asked),
    byte fallback; the special ids name `<pad>`, `<eos>`, `<bos>`, `<unk>`. A BPE model merges by piece
    score, so pieces and scores are all that encoding needs.

    Two adjustments make the rebuilt model encode as Hugging Face's tokenizer of the same GGUF does:
    control pieces other than pad / eos / bos (`<start_of_turn>`, `<unusedN>`, ...) become user-defined,
    so that their text in a prompt is one token; user-defined pieces get their spaces back as the meta
    symbol.
    """
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    if not len(pieces) == len(scores) == len(types):
        raise ValueError(f"{len(pieces)} pieces, {len(scores)} scores, {len(types)} types")
    m = sp_pb2.ModelProto()
    known = {int(v) for v in sp_pb2.ModelProto.SentencePiece.Type.values()}
    Piece = sp_pb2.ModelProto.SentencePiece
    specials = {int(i) for i in (pad_id, eos_id, bos_id) if i is not None}
    for i, (piece, score, kind) in enumerate(zip(pieces, scores, types)):
        kind = int(kind)
        if kind not in known:
            raise ValueError(f"piece {i} ({piece!r}) has unknown type {kind}")
        if unk_id is not None and i == int(unk_id):
            kind = Piece.UNKNOWN  # llama.cpp marks <unk> as control; SentencePiece needs it UNKNOWN
        elif kind == Piece.CONTROL and i not in specials:
            kind = Piece.USER_DEFINED  # <start_of_turn>, <unusedN>, ...: matched in text, as HF does
        if kind == Piece.USER_DEFINED:
            # llama.cpp's converter writes user-defined pieces with plain spaces ('    ' for a run of four);
            # SentencePiece matches them after spaces became the meta symbol.
            piece = piece.replace(" ", _META_SPACE)
        m.pieces.add(piece=piece, score=float(score), type=kind)
    t = m.trainer_spec
    t.model_type = sp_pb2.TrainerSpec.BPE
    t.vocab_size = len(pieces)
    t.byte_fallback = True
    t.split_digits = True
    t.allow_whitespace_only_pieces = True
    for name, value in (("pad", pad_id), ("eos", eos_id), ("bos", bos_id), ("unk", unk_id)):
        setattr(t, f"{name}_id", -1 if value is None else int(value))
        if value is not None:
            setattr(t, f"{name}_piece", pieces[int(value)])
    n = m.normalizer_spec
    n.name = "identity"
    n.add_dummy_prefix = add_dummy_prefix
    n.remove_extra_whitespaces = False
    n.escape_whitespaces = True
    return m.SerializeToString()


def _processor_from_bytes(serialized: bytes, source: str) -> spm.SentencePieceProcessor:
    if not serialized:
        raise DataError(source, "empty sentencepiece model")
    try:
        return spm.SentencePieceProcessor(model_proto=serialized)
    except (RuntimeError, OSError) as e:
        raise DataError(source, f"not a valid sentencepiece model ({e})") from e


def _bucket_widths(buckets: Sequence[int] | None, max_len: int | None) -> list[int]:
    """Sorted allowed widths: buckets up to `max_len`, then `max_len`. Empty means no buckets."""
    if max_len is not None and max_len < 1:
        raise ValueError(f"max_len must be positive, got {max_len}")
    if buckets is None:
        return []
    if not buckets or any(int(b) < 1 for b in buckets):
        raise ValueError(f"buckets must be positive widths, got {tuple(buckets)}")
    widths = sorted({int(b) for b in buckets if max_len is None or b <= max_len})
    if max_len is not None and (not widths or widths[-1] != max_len):
        widths.append(max_len)
    return widths
