"""experiments.bon_gaps on evaluation chunks whose gaps are known by construction."""

import json
import os

import numpy as np
import pytest

from experiments import bon_gaps


def _stage(root, name, answers, rewards, scores):
    """An evaluation stage folder with one chunk in evaluate.py's format."""
    d = os.path.join(root, name)
    os.makedirs(os.path.join(d, "chunks"))
    with open(os.path.join(d, "chunks", "prompts_000000.npz"), "wb") as f:
        np.savez(f, answers_json=np.asarray(json.dumps(answers)), rewards_BM=np.asarray(rewards, np.float32),
                 scores_BM=np.asarray(scores, np.float32))
    return d


# Five prompts x 4 samples. Prompt 0: the top score is wrong ("49" vs "39"), two wrong samples outrank the
# right one (q = 2/4; "12" scores below it). Prompt 1: the top is right (no gap). Prompt 2: no right sample
# (no gap). Prompt 3: the top is wrong by 2 and only it outranks both right ones ("5" scores between the
# two right ones, and does not count: q = 1/4). Prompt 4: as prompt 0.
ANSWERS = [["49", "49", "39", "12"], ["7", "8", "7", "7"], ["1", "2", "3", "4"], ["10", "12", "12", "5"],
           ["49", "49", "39", "12"]]
REWARDS = [[0, 0, 1, 0], [1, 0, 1, 1], [0, 0, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0]]
SCORES = [[0.9, 0.8, 0.5, 0.3], [0.9, 0.1, 0.2, 0.3], [0.1, 0.2, 0.3, 0.4], [0.9, 0.5, 0.4, 0.45],
          [0.9, 0.8, 0.5, 0.3]]


def test_gaps_shares_and_slips(tmp_path):
    s = bon_gaps.summarize(*bon_gaps.load_samples(_stage(tmp_path, "e", ANSWERS, REWARDS, SCORES)))
    assert s["gap_prompts"] == 3
    assert s["shares"] == [0.5, 0.25, 0.5]  # prompts 0, 3, 4
    assert s["top_wrong_minus_right"] == {10: 2, 2: 1}
    assert s["mean_P_none_in_M"] == pytest.approx((2 * (1 - 0.5) ** 4 + (1 - 0.25) ** 4) / 3)
    assert s["share_at_least_1/4"] == 3 and s["share_at_least_1/8"] == 3 and s["share_at_most_1/M"] == 1


def test_paired_follows_the_base_gaps(tmp_path):
    base = bon_gaps.load_samples(_stage(tmp_path, "b", ANSWERS, REWARDS, SCORES))
    # After tuning: prompt 0 unchanged (q 0.5), prompt 4 keeps one outranking wrong sample (0.5 -> 0.25),
    # prompt 3 loses every right one.
    rewards = [[0, 0, 1, 0], [1, 0, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0], [0, 1, 1, 0]]
    tuned = bon_gaps.load_samples(_stage(tmp_path, "t", ANSWERS, rewards, SCORES))
    d = bon_gaps.paired(base, tuned)
    assert d == {"gap_prompts": 3, "lower": 1, "higher_or_equal": 1, "lost_every_right_sample": 1, "fixed": 0,
                 "median_before": 0.5, "median_after_kept": 0.375}


def test_a_folder_without_chunks_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="no chunks"):
        bon_gaps.load_samples(str(tmp_path))


def test_gap_texts_names_the_slip_of_the_first_false_step():
    from experiments.gap_texts import problem_kind, slip_kind

    assert slip_kind("170-81=99\n\\boxed{99}") == "carry"
    assert slip_kind("12*11=32\n32-1=31\n\\boxed{31}") == "carry"  # 132 -> 32: a hundreds slip
    assert slip_kind("4+5=8\n8*2=16\n\\boxed{16}") == "units"
    assert slip_kind("4+5=9\n9*2=18\n18+1=20\n\\boxed{20}") == "units"  # the first false step decides
    assert slip_kind("4+5=27\n\\boxed{27}") == "other"
    assert slip_kind("4+5=9\n\\boxed{10}") == "no false step"
    assert slip_kind("4+x=9\n\\boxed{5}") == "unparsed step"
    assert problem_kind("Problem: Solve 48+x=78 for x.") == "linear"
    assert problem_kind("Problem: Compute 3*(4+5).") == "expr"
