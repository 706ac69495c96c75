"""Group advantages against hand-computed numbers (TRL's definitions, term by term)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rl.advantages import STD_EPS, group_advantages, nanstd

NAN = float("nan")


def test_group_advantages_by_hand():
    # Group 1: rewards 1, 0, 0, 1 → mean 0.5, unbiased std sqrt(1/3). Group 2: all 1 → zero spread.
    rewards = torch.tensor([[1.0], [0.0], [0.0], [1.0], [1.0], [1.0], [1.0], [1.0]])
    out = group_advantages(rewards, torch.tensor([1.0]), num_generations=4)
    a = 0.5 / (math.sqrt(1 / 3) + STD_EPS)
    torch.testing.assert_close(out.advantages, torch.tensor([a, -a, -a, a, 0, 0, 0, 0]))
    assert out.is_std_zero.tolist() == [False] * 4 + [True] * 4


def test_weighted_sum_then_group_normalise_and_scale_variants():
    rewards = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])  # one group of 4, two functions
    weights = torch.tensor([1.0, 0.5])
    total = torch.tensor([1.0, 0.5, 1.5, 0.0])
    centred = total - total.mean()
    grouped = group_advantages(rewards, weights, 4, scale_rewards="group")
    torch.testing.assert_close(grouped.advantages, centred / (total.std() + STD_EPS))
    none = group_advantages(rewards, weights, 4, scale_rewards="none")
    torch.testing.assert_close(none.advantages, centred)
    # Batch scaling: centred per group, divided by the std of the whole batch.
    two_groups = torch.cat([rewards, rewards + 1])
    batch = group_advantages(two_groups, weights, 4, scale_rewards="batch")
    all_totals = torch.cat([total, total + 1.5])
    torch.testing.assert_close(batch.advantages, torch.cat([centred, centred]) / (all_totals.std() + STD_EPS))


def test_none_rewards_stay_out_of_the_baseline():
    # Function 2 does not apply to the first group's last completion; nothing applies to the second group's last.
    rewards = torch.tensor([[1.0, 1.0], [0.0, 0.0], [1.0, NAN], [NAN, 1.0], [1.0, NAN], [NAN, NAN]])
    out = group_advantages(rewards, torch.tensor([1.0, 1.0]), num_generations=3)
    # Group 1 totals (nansum): 2, 0, 1 → mean 1, std 1.
    torch.testing.assert_close(out.advantages[:3], torch.tensor([1.0, -1.0, 0.0]) / (1 + STD_EPS))
    # Group 2 totals: 1, 1, unscorable → baseline over the two scorable ones; the unscorable one gets 0.
    assert out.advantages[3:].tolist() == [0.0, 0.0, 0.0]
    assert math.isnan(out.rewards[5].item())
    assert out.is_std_zero[3].item()


def test_normalize_then_sum_by_hand():
    rewards = torch.tensor([[1.0, 2.0], [0.0, 2.0], [1.0, 4.0], [0.0, 0.0]])  # two groups of 2
    out = group_advantages(rewards, torch.tensor([1.0, 1.0]), 2, aggregation="normalize_then_sum")
    s = math.sqrt(0.5)  # unbiased std of two values 1 apart
    per_func = torch.tensor([[0.5 / (s + STD_EPS), 0.0], [-0.5 / (s + STD_EPS), 0.0], [0.5, 2.0], [-0.5, -2.0]])
    per_func[2:, 0] /= s + STD_EPS
    per_func[2:, 1] /= 4 * s + STD_EPS
    total = per_func.sum(1)
    torch.testing.assert_close(out.advantages, (total - total.mean()) / (total.std() + STD_EPS))


def test_spread_filter_and_logged_rewards_do_not_depend_on_the_scaling_mode():
    rewards = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # group 1 has no spread
    weights = torch.tensor([1.0, 0.5])
    for scale, aggregation in [
        ("group", "sum_then_normalize"),
        ("batch", "sum_then_normalize"),
        ("none", "sum_then_normalize"),
        ("group", "normalize_then_sum"),
    ]:
        out = group_advantages(rewards, weights, 2, scale_rewards=scale, aggregation=aggregation)
        assert out.group_without_spread.tolist() == [True, True, False, False], (scale, aggregation)
        torch.testing.assert_close(out.rewards, torch.tensor([1.0, 1.0, 0.5, 1.5]))  # raw weighted sums


# Shaping values and weights that are not dyadic fractions: their fp32 sums round, which is what used to leave a
# constant group with a std of ~1e-7 and a small one-directional advantage.
_REWARD_VALUES = st.sampled_from([0.0, 1.0, 0.5, -1 / 3, 0.35, -0.1, 2 / 3, None])
_WEIGHTS = st.sampled_from([1.0, 0.5, 0.35, 0.1, 1 / 3, 2.0])


@settings(max_examples=200, deadline=None)
@given(
    num_generations=st.sampled_from([2, 3, 4, 6, 8, 16]),
    row=st.lists(_REWARD_VALUES, min_size=1, max_size=4),
    weights=st.data(),
    spread_group=st.booleans(),
    scale=st.sampled_from(["group", "batch", "none"]),
    aggregation=st.sampled_from(["sum_then_normalize", "normalize_then_sum"]),
)
def test_a_group_of_equal_rewards_has_exactly_zero_std_and_advantage(
    num_generations, row, weights, spread_group, scale, aggregation
):
    g, k = num_generations, len(row)
    w = torch.tensor(weights.draw(st.lists(_WEIGHTS, min_size=k, max_size=k)))
    constant = torch.tensor([[math.nan if v is None else v for v in row]] * g)
    # A second group with spread (batch scaling and normalize_then_sum look across groups).
    other = torch.arange(g * k, dtype=torch.float32).view(g, k) / 7 if spread_group else constant
    out = group_advantages(torch.cat([constant, other]), w, g, scale_rewards=scale, aggregation=aggregation)
    assert out.advantages[:g].tolist() == [0.0] * g  # exactly: no phantom push
    assert out.group_without_spread[:g].all()  # dynamic_sampling filters it
    if scale != "batch" and aggregation == "sum_then_normalize":
        assert out.std[:g].tolist() == [0.0] * g
        assert out.is_std_zero[:g].all()  # counted in frac_reward_zero_std
    if spread_group and all(v is not None for v in row):
        assert not out.group_without_spread[g:].any()


def test_the_issue_case_g8_weights_1_half_half_penalty_third():
    rewards = torch.tensor([[1.0, 0.0, -1 / 3]] * 8)
    out = group_advantages(rewards, torch.tensor([1.0, 0.5, 0.5]), 8)
    assert out.std.tolist() == [0.0] * 8
    assert out.advantages.tolist() == [0.0] * 8
    assert out.is_std_zero.float().mean().item() == 1.0
    assert out.group_without_spread.all()


def test_nanstd_is_unbiased_and_ignores_nan():
    x = torch.tensor([[1.0, 2.0, 3.0, NAN], [5.0, NAN, NAN, NAN]])
    assert nanstd(x, dim=1)[0].item() == pytest.approx(1.0)
    assert math.isnan(nanstd(x, dim=1)[1].item())  # one value: no spread estimate
