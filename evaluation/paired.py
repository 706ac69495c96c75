"""Paired comparison of two arms on the same questions: accuracy difference, bootstrap CI and an exact test.

Each arm is one run per seed, each run a list of scored rows (``predictions.jsonl``: ``id``, ``question_type``,
``correct``). Runs pair by seed and rows by question id, which gives a matrix of per-question differences
``d[s, q] = correct_B - correct_A`` (S seeds × Q questions). Then:

- **difference**: the mean of ``d``, i.e. accuracy(B) − accuracy(A) averaged over seeds;
- **95 % CI**: a percentile bootstrap over seeds and questions. Both are samples (of training randomness and of
  the question population), so seeds and questions are resampled independently, each with replacement (the
  "pigeonhole" bootstrap of crossed data, Owen 2007). That bootstrap counts the seed × question noise twice and is
  conservative (with 3 seeds, 0/1 outcomes: 100 % coverage for a nominal 95 %), so its replicates are rescaled
  around the estimate to the unbiased variance of the mean of a two-way crossed random-effects design,
  ``(MS_seed + MS_question − MS_residual) / (S·Q)`` (one seed: the paired variance over questions);
- **p**: an exact two-sided paired sign-flip (permutation) test on the per-question sums ``Σ_s d[s, q]``: under the
  null hypothesis the two arms are exchangeable on every question, so each sum's sign is a fair coin. With one seed
  this is exactly McNemar's exact (binomial) test on the discordant questions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import signal, stats

ALPHA = 0.05


@dataclass(frozen=True)
class PairedResult:
    """Arm B minus arm A on ``n_questions`` questions × ``n_seeds`` paired seeds (accuracy as a fraction)."""

    n_questions: int
    n_seeds: int
    accuracy_a: float
    accuracy_b: float
    difference: float
    ci_low: float
    ci_high: float
    p_value: float

    @property
    def significant(self) -> bool:
        """p below ``ALPHA`` (0.05) and a CI that excludes 0. The test takes questions as the unit on these seeds;
        the CI also covers how much the difference moves from seed to seed. A method-level claim needs both."""
        return self.p_value < ALPHA and (self.ci_low > 0 or self.ci_high < 0)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "significant": self.significant}


def sign_flip_p_value(sums: np.ndarray) -> float:
    """Exact two-sided p-value of ``Σ ε_q x_q`` with independent fair signs ε, for integer ``x`` (per-question sums).

    The null distribution is built exactly: the questions with ``|x| = k`` contribute ``k · (2 Binomial(n_k, ½) −
    n_k)``, and the S such terms are convolved, so the cost grows with the number of seeds, not of questions.
    Returns ``P(|T| ≥ |t_observed|)``; 1.0 when every ``x`` is 0 (no discordant question).
    """
    x = np.abs(np.asarray(sums, dtype=np.int64))
    observed = abs(int(np.asarray(sums, dtype=np.int64).sum()))
    pmf = np.ones(1)  # distribution of T over the support -total..total, built term by term
    for k in np.unique(x[x > 0]):
        n = int((x == k).sum())
        term = np.zeros(2 * k * n + 1)
        term[:: 2 * k] = stats.binom.pmf(np.arange(n + 1), n, 0.5)  # value k·(2j − n) at index k·(2j − n) + k·n
        pmf = signal.fftconvolve(pmf, term) if pmf.size > 1 else term
    pmf = np.clip(pmf, 0.0, None)
    support = np.arange(pmf.size) - (pmf.size - 1) // 2
    return float(min(1.0, pmf[np.abs(support) >= observed].sum() / pmf.sum()))


def mean_variance(d: np.ndarray) -> float:
    """Unbiased variance of the mean of an (S, Q) array under a crossed random-effects model (seed + question +
    residual), from the two-way ANOVA mean squares: ``(MS_seed + MS_question − MS_residual) / (S·Q)``, kept at least
    ``MS_residual / (S·Q)``; for one seed, the variance of the mean over questions."""
    n_seeds, n_questions = d.shape
    if n_questions < 2:
        return 0.0
    col = d.mean(axis=0)
    if n_seeds == 1:
        return float(col.var(ddof=1) / n_questions)
    row, grand = d.mean(axis=1), d.mean()
    ms_seed = n_questions * ((row - grand) ** 2).sum() / (n_seeds - 1)
    ms_question = n_seeds * ((col - grand) ** 2).sum() / (n_questions - 1)
    residual = d - row[:, None] - col[None, :] + grand
    ms_residual = (residual**2).sum() / ((n_seeds - 1) * (n_questions - 1))
    return float(max(ms_seed + ms_question - ms_residual, ms_residual) / (n_seeds * n_questions))


def paired_difference(
    correct_a: np.ndarray, correct_b: np.ndarray, n_boot: int = 10_000, confidence: float = 0.95, seed: int = 0
) -> PairedResult:
    """B − A from two (S, Q) 0/1 matrices whose rows are paired seeds and columns the same questions.

    Raises ValueError when the shapes differ or there is no question.
    """
    a, b = np.asarray(correct_a, dtype=np.float64), np.asarray(correct_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] == 0:
        raise ValueError(f"need two (seeds, questions) matrices of one shape, got {a.shape} and {b.shape}")
    d = b - a
    n_seeds, n_questions = d.shape
    rng = np.random.default_rng(seed)
    # Resampling counts instead of indices: mean of d over resampled seeds × questions = w·d·v / (S·Q).
    w = rng.multinomial(n_seeds, np.full(n_seeds, 1 / n_seeds), size=n_boot)
    v = rng.multinomial(n_questions, np.full(n_questions, 1 / n_questions), size=n_boot)
    boot = ((w @ d) * v).sum(axis=1) / (n_seeds * n_questions)
    spread = boot.var()
    scale = np.sqrt(mean_variance(d) / spread) if spread > 0 else 0.0
    tail = (1 - confidence) / 2
    low, high = np.quantile(d.mean() + (boot - d.mean()) * scale, [tail, 1 - tail])
    sums = np.rint(d.sum(axis=0)).astype(np.int64)
    return PairedResult(
        n_questions, n_seeds, float(a.mean()), float(b.mean()), float(d.mean()), float(low), float(high),
        sign_flip_p_value(sums),
    )  # fmt: skip


def correctness(runs: Sequence[Sequence[Mapping[str, Any]]], ids: Sequence[str]) -> np.ndarray:
    """(len(runs), len(ids)) 0/1 matrix of each run's ``correct`` on each question id (KeyError: an id is missing)."""
    out = np.zeros((len(runs), len(ids)))
    for s, rows in enumerate(runs):
        by_id = {r["id"]: bool(r["correct"]) for r in rows}
        out[s] = [by_id[i] for i in ids]
    return out


def compare_arms(
    runs_a: Mapping[Any, Sequence[Mapping[str, Any]]],
    runs_b: Mapping[Any, Sequence[Mapping[str, Any]]],
    n_boot: int = 10_000,
) -> dict[str, PairedResult]:
    """Paired B − A overall (key ``"all"``) and per question type, from {seed: prediction rows} of each arm.

    Only seeds both arms ran are used. Raises ValueError when they share no seed or their runs were not
    evaluated on the same questions (a paired comparison is then meaningless).
    """
    seeds = sorted(set(runs_a) & set(runs_b), key=str)
    if not seeds:
        raise ValueError(f"no seed in common (A: {sorted(runs_a, key=str)}, B: {sorted(runs_b, key=str)})")
    question_sets = {frozenset(r["id"] for r in rows) for arm in (runs_a, runs_b) for rows in (arm[s] for s in seeds)}
    if len(question_sets) != 1:
        raise ValueError("the runs were not evaluated on the same questions")
    types = {r["id"]: r["question_type"] for r in runs_a[seeds[0]]}
    ids = sorted(types)
    a = correctness([runs_a[s] for s in seeds], ids)
    b = correctness([runs_b[s] for s in seeds], ids)
    out = {"all": paired_difference(a, b, n_boot)}
    for qtype in sorted(set(types.values())):
        cols = [i for i, q in enumerate(ids) if types[q] == qtype]
        out[qtype] = paired_difference(a[:, cols], b[:, cols], n_boot)
    return out
