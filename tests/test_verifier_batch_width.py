"""Verifier minibatches cut to their own width (`bon_jax.train.lm.take_rows`), as SFT's are: the widths
follow the rows' lengths, and the loss of a batch is the same at its cut width as at the table's."""

import jax
import numpy as np
import pytest

from bon_jax.models import get_config
from bon_jax.tokenizer import Tokenizer, sequence_batch
from bon_jax.train.lm import take_rows, trim_width
from bon_jax.verifiers.learned import init_verifier_params
from bon_jax.verifiers.train import bce_loss, train_verifier

LENGTHS = (5, 40, 17, 3, 16, 33)  # real tokens per row of a [6, 128] table


def _table(vocab: int = 40) -> dict:
    r = np.random.default_rng(0)
    n, T = len(LENGTHS), 128
    tokens = np.zeros((n, T), np.int32)
    completion = np.zeros((n, T), bool)
    for i, length in enumerate(LENGTHS):
        tokens[i, :length] = [2] + list(r.integers(4, vocab, length - 1))
        completion[i, length // 2:length] = True  # the second half: the completion and its eos
    return {"tokens_BT": tokens, "valid_BT": tokens != 0, "completion_BT": completion,
            "label_B": (np.arange(n) % 2).astype(np.int32), "group_B": np.arange(n) // 2}


@pytest.mark.parametrize("idx, width", [([0, 3], 16), ([1], 48), ([2, 4], 32), ([4], 16), ([5, 0], 48),
                                        ([0, 1, 2, 3, 4, 5], 48)])
def test_batch_width_follows_the_longest_row(idx, width):
    table = _table()
    batch = take_rows(table, np.asarray(idx))
    assert trim_width(table["valid_BT"][idx]) == width
    for k in ("tokens_BT", "valid_BT", "completion_BT"):
        assert batch[k].shape == (len(idx), width)
        np.testing.assert_array_equal(batch[k], table[k][idx, :width])
    np.testing.assert_array_equal(batch["label_B"], table["label_B"][idx])
    np.testing.assert_array_equal(batch["group_B"], table["group_B"][idx])
    assert batch["valid_BT"].sum() == table["valid_BT"][idx].sum()  # nothing real was cut


@pytest.mark.parametrize("pooling", ["last", "noisy_or_surprisal"])
def test_the_loss_of_a_batch_is_the_same_at_its_cut_width(pooling):
    cfg = get_config("tiny", vocab_size=40)
    params, _ = init_verifier_params(cfg, jax.random.key(0))
    params = dict(params, value_head=jax.tree.map(lambda x: 10.0 * x, params["value_head"]))
    loss = jax.jit(bce_loss(cfg, (0.7, 1.3), ranking_weight=0.5, pooling=pooling))
    table = _table()
    idx = np.asarray([0, 3, 2, 4])  # longest 17: width 32 of 128
    cut, full = take_rows(table, idx), {k: v[idx] for k, v in table.items()}
    assert cut["tokens_BT"].shape[1] == 32
    (got, got_m), (want, want_m) = loss(params, cut), loss(params, full)
    np.testing.assert_allclose(float(got), float(want), rtol=2e-6, atol=1e-6)
    for k in ("bce", "rank", "mean_prob"):
        np.testing.assert_allclose(float(got_m[k]), float(want_m[k]), rtol=2e-6, atol=1e-6)
    assert float(want_m["rank"]) > 0  # the ranking term is really in the loss


def test_train_verifier_cuts_each_minibatch(monkeypatch):
    """Short rows and one long one: the table is as wide as the long row, most minibatches are not."""
    import bon_jax.verifiers.train as verifier_train

    seen, run_loop = [], verifier_train.run_loop

    def spy(stage_dir, state, update, batch_fn, *args, **kwargs):  # what the update is fed
        def fed(step, st):
            batch = batch_fn(step, st)
            seen.append(batch["tokens_BT"].shape[1])
            return batch
        return run_loop(stage_dir, state, update, fed, *args, **kwargs)

    monkeypatch.setattr(verifier_train, "run_loop", spy)
    texts = ["1+2=3", "4+4=8", "2*3=6", "9-1=8", "7+1=8", "3*3=9"]
    tok = Tokenizer.train(texts * 20, vocab_size=300, hard_vocab_limit=False)
    prompts = ["1+2"] * 7 + ["1+2+3+4+5+6+7+8+9+1+2+3+4+5+6+7+8+9+1+2+3+4+5+6+7+8+9"]
    completions = ["=3", "=4", "=3", "=5", "=3", "=2", "=3", "=135"]
    labels = [1, 0, 1, 0, 1, 0, 1, 1]
    table_width = sequence_batch(tok, prompts, completions, 128)["valid_BT"].sum(1).max()
    assert table_width > 32 and max(len(tok.encode(p + c)) for p, c in zip(prompts[:7], completions)) < 12
    cfg = get_config("tiny", vocab_size=tok.vocab_size, num_layers=1, attention_types=("global",))
    _, metrics = train_verifier(cfg, tok, prompts, completions, labels, steps=4, batch_size=2, lr=1e-3,
                                progress=False, log_every=1)
    assert metrics["width"] == -(-table_width // 16) * 16
    # 4 batches of 2 over the 8 rows: the long row is in one of them, the other three are 16 wide.
    assert metrics["batch_width_mean"] == (3 * 16 + metrics["width"]) / 4
    assert metrics["batch_widths"] == 2
    assert sorted(seen) == [16, 16, 16, metrics["width"]]
