"""Paired arm comparison (evaluation/paired.py): exact test, bootstrap CI coverage and false-positive rate."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from scipy import stats

from evaluation.paired import compare_arms, paired_difference, sign_flip_p_value


def test_one_seed_sign_flip_test_is_mcnemars_exact_test():
    sums = np.array([1] * 12 + [-1] * 4 + [0] * 50)  # 12 questions only B gets right, 4 only A
    assert sign_flip_p_value(sums) == pytest.approx(stats.binomtest(12, 16, 0.5).pvalue, rel=1e-9)


def test_several_seeds_p_value_equals_full_enumeration():
    sums = np.array([2, 1, -1, 3, 0, 2, -2, 1, -3])
    observed = abs(sums.sum())
    flips = [abs((np.array(e) * np.abs(sums)).sum()) >= observed for e in itertools.product([-1, 1], repeat=9)]
    assert sign_flip_p_value(sums) == pytest.approx(np.mean(flips), rel=1e-9)
    assert sign_flip_p_value(np.zeros(5, dtype=int)) == 1.0


def _simulate(rng: np.random.Generator, delta: float, n_questions: int = 150, n_seeds: int = 3):
    """Questions drawn from a population (difficulty ~ U(0.2, 0.7)), each seed answering independently; arm B is
    ``delta`` more likely right on every question, so the population difference is exactly ``delta``."""
    p_a = rng.uniform(0.2, 0.7, size=n_questions)
    a = rng.random((n_seeds, n_questions)) < p_a
    b = rng.random((n_seeds, n_questions)) < p_a + delta
    return a.astype(float), b.astype(float)


def test_a_null_difference_is_called_significant_about_5_percent_of_the_time():
    rng = np.random.default_rng(0)
    calls = [paired_difference(*_simulate(rng, 0.0), n_boot=200, seed=i).significant for i in range(300)]
    assert np.mean(calls) <= 0.07


def test_the_95_percent_interval_covers_the_true_difference():
    rng = np.random.default_rng(1)
    results = [paired_difference(*_simulate(rng, 0.1), n_boot=2000, seed=i) for i in range(200)]
    coverage = np.mean([r.ci_low <= 0.1 <= r.ci_high for r in results])
    assert 0.90 <= coverage <= 0.99
    assert np.mean([r.significant for r in results]) > 0.7  # and a real difference of 0.1 is mostly found (0.745)


def _rows(correct: list[bool], types: list[str]) -> list[dict]:
    return [
        {"id": f"q{i}", "question_type": t, "correct": c} for i, (c, t) in enumerate(zip(correct, types, strict=True))
    ]


def test_compare_arms_pairs_seeds_and_questions_overall_and_per_type():
    types = ["presence"] * 6 + ["size"] * 4
    a = {0: _rows([True] * 5 + [False] * 5, types), 1: _rows([True] * 4 + [False] * 6, types)}
    b = {0: _rows([True] * 10, types), 1: _rows([True] * 9 + [False], types), 2: _rows([False] * 10, types)}
    out = compare_arms(a, b, n_boot=500)
    assert out["all"].n_seeds == 2 and out["all"].n_questions == 10  # seed 2 has no partner
    assert out["all"].difference == pytest.approx((0.5 + 0.5) / 2)
    assert out["presence"].difference == pytest.approx(((1 - 5 / 6) + (1 - 4 / 6)) / 2)
    assert out["size"].difference == pytest.approx((1.0 + 0.75) / 2)
    with pytest.raises(ValueError, match="same questions"):
        compare_arms(a, {0: _rows([True] * 9, types[:9]), 1: b[1]})
    with pytest.raises(ValueError, match="no seed in common"):
        compare_arms(a, {5: b[0]})


def test_compare_writes_the_paired_table_for_runs_on_the_same_questions(tmp_path):
    from evaluation.compare import main
    from evaluation.run_folder import write_run

    types = ["presence"] * 30 + ["size"] * 30
    dirs = []
    for name, right in (("sft", 30), ("grpo", 48)):  # grpo: 18 more questions right, none fewer
        for seed in (0, 1):
            rows = _rows([i < right for i in range(60)], types)
            for r in rows:  # what an evaluation writes beside "correct"
                r.update(truth="yes", options=["yes", "no"], answer="yes" if r["correct"] else "no", valid=True)
            run = tmp_path / f"{name}_s{seed}"
            write_run(run, {"accuracy": right / 60}, rows, {"name": name, "seed": seed, "split": "valid"})
            dirs.append(str(run))
    md = main([*dirs, "--out", str(tmp_path / "cmp")]).read_text()
    assert "## Paired differences" in md
    assert "| grpo − sft | all | +0.300* |" in md
    assert "| grpo − sft | presence | +0.000 |" in md  # both got all 30 presence questions right
    pairs = json.loads((tmp_path / "cmp" / "paired.json").read_text())
    assert pairs[0]["results"]["all"]["p_value"] == pytest.approx(2 * 0.5**18)  # McNemar: 18 discordant, all one way
