"""Diagnosis metrics (evaluation.metrics, .detection, .diagnosis) on hand-built prediction rows: perfect, all wrong,
mixed, one class absent, many batches."""

from __future__ import annotations

import math

import pytest
import torch

from datamodules.vqa_records import QUESTION_TYPES
from evaluation.answers import answer_prefix
from evaluation.detection import AbnormalityDetection, calibration_bins
from evaluation.diagnosis import DiagnosisMetrics
from evaluation.metrics import VQAAccuracy, prediction_row

LABELS = ("Lung nodule", "Emphysema", "Cardiomegaly")


def meta(qtype="presence", truth="yes", label="Lung nodule", options=("yes", "no"), **extra):
    return {
        "id": extra.pop("id", f"{label}-{truth}"),
        "question_type": qtype,
        "question": "Is there a finding?",
        "answer": truth,
        "options": list(options),
        "abnormality": label,
        "reasoning": "A small round density in the right upper lobe.",
        "prompt_format": "think",
        **extra,
    }


def said(answer: str, reasoning: str = "A small round density in the right upper lobe.") -> str:
    return f"<think>{reasoning}</think><answer>{answer}</answer>"


def row(truth: str, answer: str, label: str = "Lung nodule", p_yes: float | None = None, **extra) -> dict:
    return prediction_row(said(answer), meta(truth=truth, label=label, **extra), p_yes)


def test_prediction_row_fields():
    r = row("yes", "Yes.", p_yes=0.8)
    assert r["answer"] == "yes" and r["correct"] and r["valid"] and r["formatted"]
    assert r["reasoning"] == "A small round density in the right upper lobe." and r["p_yes"] == 0.8
    bad = prediction_row("I think yes", meta())
    assert bad["answer"] is None and not bad["correct"] and not bad["valid"] and not bad["formatted"]
    assert bad["reasoning"] is None


def test_perfect_and_all_wrong_detection():
    truths = [("yes", "Lung nodule"), ("no", "Lung nodule"), ("yes", "Emphysema"), ("no", "Emphysema")]
    perfect = AbnormalityDetection(LABELS)
    perfect.update([row(t, t, lab, p_yes=0.9 if t == "yes" else 0.1, id=f"{i}") for i, (t, lab) in enumerate(truths)])
    out = perfect.compute()
    assert out["macro_f1"] == 1.0 and out["micro_f1"] == 1.0 and out["auroc"] == 1.0 and out["auprc"] == 1.0
    assert set(out["per_abnormality"]) == {"Lung nodule", "Emphysema"}  # a label never asked is not reported

    wrong = AbnormalityDetection(LABELS)
    flip = {"yes": "no", "no": "yes"}
    rows = [row(t, flip[t], lab, p_yes=0.1 if t == "yes" else 0.9, id=f"{i}") for i, (t, lab) in enumerate(truths)]
    wrong.update(rows)
    out = wrong.compute()
    assert out["macro_f1"] == 0.0 and out["micro_f1"] == 0.0 and out["auroc"] == 0.0
    assert out["per_abnormality"]["Lung nodule"]["precision"] == 0.0


def test_mixed_counts_by_hand():
    # Lung nodule: TP, FP, FN, TN -> P = R = F1 = 0.5. Emphysema: TP, TP, FN -> P 1, R 2/3, F1 0.8.
    rows = [
        row("yes", "yes", id="a"),
        row("no", "yes", id="b"),
        row("yes", "no", id="c"),
        row("no", "no", id="d"),
        row("yes", "yes", "Emphysema", id="e"),
        row("yes", "yes", "Emphysema", id="f"),
        prediction_row("no answer at all", meta(truth="yes", label="Emphysema", id="g")),  # invalid: a miss
    ]
    metric = AbnormalityDetection(LABELS)
    metric.update(rows)
    out = metric.compute()
    nodule, emph = out["per_abnormality"]["Lung nodule"], out["per_abnormality"]["Emphysema"]
    assert (nodule["precision"], nodule["recall"], nodule["f1"]) == (0.5, 0.5, 0.5)
    assert emph["precision"] == 1.0 and emph["recall"] == pytest.approx(2 / 3) and emph["f1"] == pytest.approx(0.8)
    assert out["macro_f1"] == pytest.approx((0.5 + 0.8) / 2)
    # micro: TP 3, FP 1, FN 2 -> 6 / (6 + 3)
    assert out["micro_f1"] == pytest.approx(6 / 9)
    assert emph["support"] == 3 and nodule["support"] == 2


def test_one_class_absent_gives_nan_auroc_not_zero():
    metric = AbnormalityDetection(LABELS)
    metric.update([row("yes", "yes", p_yes=0.7, id="a"), row("yes", "no", p_yes=0.4, id="b")])
    out = metric.compute()
    assert math.isnan(out["auroc"]) and math.isnan(out["auprc"])
    assert out["per_abnormality"]["Lung nodule"]["recall"] == 0.5
    assert out["ece"] == pytest.approx((0.3 + 0.6) / 2)  # |0.7 - 1| and |0.4 - 1| in separate bins


def test_state_across_batches_equals_one_batch_and_padding_is_skipped():
    gen = torch.Generator().manual_seed(0)
    rows = []
    for i in range(40):
        truth = "yes" if i % 3 else "no"
        p = float(torch.rand(1, generator=gen))
        rows.append(row(truth, "yes" if p > 0.5 else "no", LABELS[i % 3], p_yes=p, id=str(i)))
    rows += [
        prediction_row(said("small"), meta("size", "small", None, ["small", "large"], id="s1")),
        prediction_row(said("large"), meta("size", "small", None, ["small", "large"], id="s2")),
    ]
    whole, parts = DiagnosisMetrics(QUESTION_TYPES, LABELS), DiagnosisMetrics(QUESTION_TYPES, LABELS)
    whole.update(rows)
    for start in range(0, len(rows), 7):
        parts.update(rows[start : start + 7])
    padding = [{**r, "padding": True} for r in rows[:5]]
    parts.update(padding)  # repeats from EvenEvalSampler: never counted
    a, b = whole.compute(), parts.compute()
    for key in ("accuracy", "macro_f1", "micro_f1", "auroc", "auprc", "ece", "bleu", "rouge_l", "accuracy/size"):
        assert a[key] == pytest.approx(b[key]), key
    assert a["accuracy/size"] == 0.5 and a["n/presence"] == 40
    assert a["bleu"] == pytest.approx(1.0) and a["rouge_l"] == pytest.approx(1.0)  # reasoning copied verbatim


def test_accuracy_per_type_and_rates():
    metric = VQAAccuracy(QUESTION_TYPES)
    metric.update(
        [
            row("yes", "yes", id="a"),
            row("no", "maybe", id="b"),  # formatted, not valid, wrong
            prediction_row("<answer>no</answer>", meta(truth="no", id="c")),  # think missing: not formatted
        ]
    )
    out = metric.compute()
    assert out["accuracy"] == pytest.approx(2 / 3) and out["chance"] == 0.5
    assert out["format_rate"] == pytest.approx(2 / 3) and out["validity_rate"] == pytest.approx(2 / 3)
    assert "accuracy/size" not in out


def test_calibration_bins():
    bins = calibration_bins(torch.tensor([0.05, 0.15, 0.95, 1.0]), torch.tensor([0, 1, 1, 1]))
    assert bins["count"][0] == 1 and bins["count"][1] == 1 and bins["count"][9] == 2
    assert bins["fraction_positive"][9] == 1.0 and bins["mean_confidence"][9] == pytest.approx(0.975)
    assert math.isnan(bins["mean_confidence"][5])


@pytest.mark.parametrize(
    ("completion", "prefix"),
    [
        ("<think>round density</think><answer>yes</answer>", "<think>round density</think><answer>"),
        ("<think>round density</think> yes", "<think>round density</think><answer>"),
        ("just yes", "<answer>"),
        ("<answer>no</answer><answer>yes</answer>", "<answer>no</answer><answer>"),  # the graded, last one
    ],
)
def test_answer_prefix(completion, prefix):
    assert answer_prefix(completion) == prefix


def test_capitalised_yes_no_options_count_as_yes_and_no():
    rows = [
        prediction_row(said("Yes"), meta(truth="Yes", options=("Yes", "No"), id="a")),
        prediction_row(said("No"), meta(truth="Yes", options=("Yes", "No"), id="b")),
    ]
    metric = AbnormalityDetection(LABELS)
    metric.update(rows)
    nodule = metric.compute()["per_abnormality"]["Lung nodule"]
    assert (nodule["precision"], nodule["recall"]) == (1.0, 0.5)


def test_reset_clears_the_text_scores_too():
    metrics = DiagnosisMetrics(QUESTION_TYPES, LABELS)
    metrics.update([prediction_row(said("yes", "completely different words here"), meta(id="a"))])
    first = metrics.compute()["bleu"]
    metrics.reset()
    metrics.update([row("yes", "yes", id="b")])  # reasoning copied verbatim: BLEU 1 unless the old pair stayed
    assert first < 0.5 and metrics.compute()["bleu"] == pytest.approx(1.0)


def test_lettered_options_and_letter_gold_are_read_as_the_options_they_denote():
    """OmniMedVQA-style options ("A. Yes") and a letter gold ("A"): the row is correct and detection sees yes/no
    (before, "A" was compared with "A. Yes" as text, and neither counted as a yes)."""
    lettered = ("A. Yes", "B. No")
    rows = [
        prediction_row(said("A"), meta(truth="A", options=lettered, id="a")),  # true positive
        prediction_row(said("Yes"), meta(truth="B", options=lettered, id="b")),  # false positive
        prediction_row(said("B. No"), meta(truth="A", options=lettered, id="c")),  # false negative
    ]
    assert [r["correct"] for r in rows] == [True, False, False]
    # Both as the option is written, so the confusion matrix (evaluation/plots.py) puts row 0 on its diagonal.
    assert [(r["truth"], r["answer"]) for r in rows] == [("A. Yes", "A. Yes"), ("B. No", "A. Yes"), ("A. Yes", "B. No")]
    assert all(r["valid"] for r in rows)
    metric = AbnormalityDetection(LABELS)
    metric.update(rows)
    nodule = metric.compute()["per_abnormality"]["Lung nodule"]
    assert (nodule["precision"], nodule["recall"], nodule["support"]) == (0.5, 0.5, 2)


def test_empty_answer_is_never_correct_and_never_a_yes():
    rows = [
        prediction_row(said(""), meta(qtype="location", truth="", options=(), id="a")),
        prediction_row(said("\u200b"), meta(truth="yes", options=(), id="b")),
        prediction_row("<answer>yes</answer><answer>no</answer>", meta(truth="no", id="c")),
    ]
    assert [(r["correct"], r["valid"]) for r in rows] == [(False, False), (False, False), (True, False)]
    accuracy = VQAAccuracy(QUESTION_TYPES)
    accuracy.update(rows)
    assert accuracy.compute()["accuracy"] == pytest.approx(1 / 3) and accuracy.compute()["validity_rate"] == 0.0
    metric = AbnormalityDetection(LABELS)
    metric.update(rows[1:2])
    assert metric.compute()["per_abnormality"]["Lung nodule"]["recall"] == 0.0
