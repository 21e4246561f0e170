"""scripts/pg_vs_rft.py: the four advantages it compares (hand-computed groups)."""

import importlib.util
from pathlib import Path

import pytest
import torch

SPEC = importlib.util.spec_from_file_location("pg_vs_rft", Path(__file__).parents[1] / "scripts" / "pg_vs_rft.py")
pg_vs_rft = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(pg_vs_rft)

REWARDS = torch.tensor([[1., 0., 1., 1.], [0., 0., 0., 0.]])  # (B=2, G=4): 3 of 4 right, then none
PROMPTS = ["p"] * 4 + ["q"] * 4
COMPLETIONS = ["a", "b", "a", "c", "a", "a", "a", "a"]  # prompt p: "a" right twice, "c" right once


def adv(kind):
    return pg_vs_rft.advantages(kind, REWARDS, PROMPTS, COMPLETIONS).tolist()


def test_group_is_grpo_with_negative_advantages():
    # mean 0.75, unbiased std 0.5: (1 - 0.75) / 0.5 = 0.5, (0 - 0.75) / 0.5 = -1.5; an all-wrong group gives 0
    assert adv("group") == pytest.approx([0.5, -1.5, 0.5, 0.5, 0, 0, 0, 0], abs=1e-3)
    assert adv("group_positive") == pytest.approx([0.5, 0, 0.5, 0.5, 0, 0, 0, 0], abs=1e-3)  # no push down


def test_positive_only_advantages():
    assert adv("positive") == [1, 0, 1, 1, 0, 0, 0, 0]
    assert adv("per_prompt") == pytest.approx([1 / 3, 0, 1 / 3, 1 / 3, 0, 0, 0, 0])  # a solved prompt sums to 1
    assert adv("distinct") == [1, 0, 0, 1, 0, 0, 0, 0]  # the second "a" of p is a duplicate; q has none right


def test_distinct_is_per_prompt():
    # the same right completion under two prompts counts once for each
    rewards = torch.tensor([[1., 1.], [1., 0.]])
    out = pg_vs_rft.advantages("distinct", rewards, ["p", "p", "q", "q"], ["a", "a", "a", "b"])
    assert out.tolist() == [1, 0, 1, 0]


def test_unknown_advantage_names_the_flag():
    with pytest.raises(ValueError, match="--advantage"):
        pg_vs_rft.advantages("nope", REWARDS, PROMPTS, COMPLETIONS)
