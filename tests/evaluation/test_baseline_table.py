"""The comparison table's numbers (evaluation/baseline_table.py) on hand-made prediction rows: the point estimates are
the project's metrics, the CIs hold them, and a model that is always right gets [1, 1]."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from datamodules.ctrate import CTRATE_LABELS
from datamodules.vqa_records import QUESTION_TYPES
from evaluation.baseline_table import bootstrap_table_row, columns, mismatches, question_arrays, statistics
from evaluation.diagnosis import DiagnosisMetrics
from evaluation.metrics import prediction_row

LABELS = CTRATE_LABELS[:4]
OPTIONS = {"presence": ["yes", "no"], "location": ["A. left lung", "B. right lung", "C. both lungs"]}


def rows(n: int, seed: int = 0, skill: float = 0.7) -> list[dict]:
    """``n`` scored rows from made-up completions: right with probability ``skill``, the others unformatted at times
    (every completion formatted when ``skill`` is 1)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        qtype = "presence" if i % 3 else "location"
        options = OPTIONS[qtype]
        truth = rng.choice(options)
        answer = truth if rng.random() < skill else rng.choice(options)
        completion = rng.choices(
            [f"<think>looked</think><answer>{answer}</answer>", f"<answer>{answer}</answer>", "it is unclear"],
            weights=[6, 2, 1] if skill < 1 else [1, 0, 0],
        )[0]
        meta = {"id": f"q{i:03d}", "question_type": qtype, "question": "?", "options": options, "answer": truth}
        meta["abnormality"] = LABELS[i % len(LABELS)] if qtype == "presence" else None
        p_yes = min(1.0, max(0.0, (0.65 if truth == "yes" else 0.35) + rng.gauss(0, 0.2)))
        out.append(prediction_row(completion, meta, p_yes if qtype == "presence" else None))
    return out


def metrics_of(predictions: list[dict]) -> dict:
    metrics = DiagnosisMetrics(QUESTION_TYPES, CTRATE_LABELS)
    metrics.update(predictions)
    return metrics.compute()


def test_point_estimates_are_the_projects_metrics():
    predictions = rows(120)
    table = bootstrap_table_row(predictions, n_boot=50)
    metrics = metrics_of(predictions)
    assert mismatches(table, metrics) == []
    for key in ("accuracy", "accuracy/presence", "accuracy/location", "macro_f1", "auroc", "format_rate"):
        assert table[key]["value"] == pytest.approx(metrics[key], abs=1e-9), key
    assert 0 < table["macro_f1"]["value"] < 1 and 0.5 < table["auroc"]["value"] < 1
    per_type = [metrics["accuracy/presence"], metrics["accuracy/location"]]
    assert table["average"]["value"] == pytest.approx(sum(per_type) / 2)  # the paper's average: over types


def test_cis_contain_the_point_estimate_and_shrink_with_more_questions():
    few, many = bootstrap_table_row(rows(60, seed=1)), bootstrap_table_row(rows(600, seed=1))
    for table in (few, many):
        for key, stats in table.items():
            assert stats["low"] <= stats["value"] <= stats["high"], key
    width = {key: table["accuracy"]["high"] - table["accuracy"]["low"] for key, table in (("f", few), ("m", many))}
    assert width["m"] < width["f"] / 2  # ~ 1 / sqrt(n): 10x the questions, a third of the width


def test_a_model_always_right_gets_one_one():
    table = bootstrap_table_row(rows(90, seed=2, skill=1.0))
    for key in columns(["presence", "location"]):
        if key == "auroc":  # p(yes) is no answer: a noisy score, right or not
            continue
        assert (table[key]["value"], table[key]["low"], table[key]["high"]) == (1.0, 1.0, 1.0), key


def test_same_questions_same_resamples_whatever_the_row_order():
    predictions = rows(80, seed=3)
    shuffled = random.Random(0).sample(predictions, len(predictions))
    assert bootstrap_table_row(predictions, seed=5) == bootstrap_table_row(shuffled, seed=5)
    assert bootstrap_table_row(predictions, seed=5) != bootstrap_table_row(predictions, seed=6)


def test_auroc_undefined_with_one_class_and_mismatches_named():
    predictions = [r for r in rows(60, seed=4) if r["question_type"] == "location" or r["truth"] == "yes"]
    table = bootstrap_table_row(predictions, n_boot=20)
    assert math.isnan(table["auroc"]["value"]) and math.isnan(table["auroc"]["low"])
    metrics = metrics_of(predictions)
    assert mismatches(table, metrics) == []  # NaN here, null/NaN there: they agree
    metrics["accuracy"] += 0.1
    assert [m.split(":")[0] for m in mismatches(table, metrics)] == ["accuracy"]


def test_resampled_statistics_are_the_metrics_of_the_resampled_rows():
    """One bootstrap replicate is the metrics of the questions it drew (repeats counted as often as drawn)."""
    predictions = sorted(rows(50, seed=6), key=lambda r: r["id"])
    idx = np.random.default_rng(0).integers(0, len(predictions), size=(1, len(predictions)))
    replicate = statistics(question_arrays(predictions), idx)
    metrics = metrics_of([predictions[i] for i in idx[0]])
    for key in ("accuracy", "accuracy/presence", "macro_f1", "auroc", "validity_rate"):
        assert replicate[key][0] == pytest.approx(metrics[key], abs=1e-6), key


def test_columns_follow_the_project_type_order():
    assert columns({"count", "presence", "size"})[:3] == ["accuracy/presence", "accuracy/size", "accuracy/count"]
    assert columns([])[0] == "average"
