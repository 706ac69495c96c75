"""The CT-RATE 18-abnormality protocol end to end (cli.py test, configs/eval_18label.yaml), and its metrics against
a hand computation and torchmetrics."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torchmetrics.functional.classification import binary_auroc, binary_f1_score, binary_precision, binary_recall

from cli import main
from datamodules.ctrate import CTRATE_LABELS
from evaluation.ctrate_metrics import point_metrics, protocol_metrics, resample_metrics
from evaluation.ctrate_protocol import render_table, write_protocol

ROOT = Path(__file__).resolve().parents[2]
EVAL_18 = str(ROOT / "configs" / "eval_18label.yaml")


def test_metrics_equal_a_hand_computation_and_an_undefined_label_stays_undefined():
    # Label A: truth 1 0 1 0, p .9 .6 .4 .1 → at 0.5: tp fp fn tn, so precision = recall = F1 = accuracy = 1/2, and
    # AUROC = pairs (pos > neg) / 4 = (.9>.6, .9>.1, .4>.1) = 3/4. Label B: no positive, all answered "no".
    p = np.array([[0.9, 0.2], [0.6, 0.1], [0.4, 0.3], [0.1, 0.7]])
    y = np.array([[1, 0], [0, 0], [1, 0], [0, 0]])
    out = protocol_metrics(p, y, (p >= 0.5).astype(float), ["A", "B"], n_boot=200, seed=0)
    a, b = out["per_label"]["A"], out["per_label"]["B"]
    assert {m: a[m]["value"] for m in ("auroc", "f1", "precision", "recall", "accuracy")} == pytest.approx(
        {"auroc": 0.75, "f1": 0.5, "precision": 0.5, "recall": 0.5, "accuracy": 0.5}
    )
    assert (a["positives"], a["negatives"]) == (2, 2)
    assert all(math.isnan(b[m][k]) for m in ("auroc", "f1", "precision", "recall") for k in ("value", "low", "high"))
    assert b["accuracy"]["value"] == 0.75  # one false "yes" (p .7) in four
    assert out["macro"]["f1"]["value"] == 0.5 and out["macro"]["f1"]["labels"] == 1  # B left out, not counted as 0
    assert out["macro"]["accuracy"]["value"] == pytest.approx(0.625)
    assert a["auroc"]["low"] <= 0.75 <= a["auroc"]["high"]
    table = render_table(out)
    assert "| B | 0/4 | n/a | n/a | n/a | n/a | 0.750 [" in table


def test_resampled_metrics_equal_torchmetrics_on_the_repeated_volumes():
    rng = np.random.default_rng(1)
    p = np.round(rng.random((30, 3)), 1)  # rounded: ties, which AUROC counts as one half
    y = (rng.random((30, 3)) < 0.4).astype(float)
    b = (p >= 0.5).astype(float)
    counts = np.stack([np.bincount(rng.integers(0, 30, 30), minlength=30) for _ in range(4)])
    got = resample_metrics(counts, p, y, b)
    for k, c in enumerate(counts):
        idx = np.repeat(np.arange(30), c)
        expected = point_metrics(p[idx], y[idx], b[idx])
        for name in expected:
            np.testing.assert_allclose(got[name][k], expected[name], atol=1e-6, err_msg=name)
    pt, yt = torch.tensor(p[:, 0]), torch.tensor(y[:, 0]).long()
    point = point_metrics(p, y, b)
    assert point["auroc"][0] == pytest.approx(float(binary_auroc(pt, yt)))
    for name, fn in (("f1", binary_f1_score), ("precision", binary_precision), ("recall", binary_recall)):
        assert point[name][0] == pytest.approx(float(fn(torch.tensor(b[:, 0]), yt)))


def test_a_volume_missing_labels_has_empty_cells_and_is_not_scored(tmp_path):
    rows = [
        {
            "question_type": "presence",
            "volume_name": f"valid_{v}_a_1.nii.gz",
            "abnormality": label,
            "p_yes": p,
            "truth": "yes" if j % 2 == v % 2 else "no",
            "answer": "yes",
            "options": ["yes", "no"],
        }
        for v, n_labels in ((1, 18), (2, 18), (3, 5))
        for j, label in enumerate(CTRATE_LABELS[:n_labels])
        for p in [0.1 + 0.04 * j + 0.01 * v]
    ]
    metrics = write_protocol(tmp_path, rows, n_boot=20)
    assert metrics["volumes"] == 2
    with (tmp_path / "predictions_bin.csv").open() as f:
        table = list(csv.reader(f))
    assert table[3][:7] == ["valid_3_a_1", "0", "0", "0", "0", "0", ""]


def test_cli_writes_the_submission_files_and_the_metrics(tmp_path, synthetic_root, tiny_model_dir):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(
        yaml.safe_dump(
            {
                "model": {"init_args": {"model_path": str(tiny_model_dir), "max_new_tokens": 4}},
                "data": {"data_dir": str(synthetic_root), "synthetic": None, "num_workers": 0, "eval_batch_size": 27},
                "trainer": {
                    "enable_progress_bar": False,
                    "callbacks": [
                        {
                            "class_path": "evaluation.ctrate_protocol.CTRATEProtocolReport",
                            "init_args": {"out_dir": str(tmp_path / "eval"), "name": "tiny", "n_boot": 50},
                        }
                    ],
                },
            }
        )
    )
    main(["test", "--config", EVAL_18, "--config", str(overlay)])
    run = tmp_path / "eval" / "tiny"
    labels_csv = synthetic_root / "dataset/multi_abnormality_labels/valid_predicted_labels.csv"
    with labels_csv.open() as f:
        truth = {r["VolumeName"].removesuffix(".nii.gz"): r for r in csv.DictReader(f)}
    for name in ("predictions_prob.csv", "predictions_bin.csv"):
        with (run / name).open() as f:
            table = list(csv.reader(f))
        assert table[0] == ["AccessionNo", *CTRATE_LABELS]
        assert sorted(r[0] for r in table[1:]) == sorted(truth)  # one row per volume
        values = [float(v) for r in table[1:] for v in r[1:]]
        assert all(0 <= v <= 1 for v in values) and len(values) == 18 * len(truth)
    with (run / "predictions_prob.csv").open() as f:
        probs = {r["AccessionNo"]: r for r in csv.DictReader(f)}
    metrics = json.loads((run / "ctrate18_metrics.json").read_text())
    assert metrics["volumes"] == len(truth) and metrics["questions_sha256"]
    for label in CTRATE_LABELS:
        y = [int(truth[v][label]) for v in sorted(truth)]
        entry = metrics["per_label"][label]
        if sum(y) == 0:  # e.g. "Medical material": no positive in this split
            assert entry["auroc"]["value"] is None and entry["f1"]["value"] is None
        elif 0 < sum(y) < len(y):
            p = torch.tensor([float(probs[v][label]) for v in sorted(truth)])
            assert entry["auroc"]["value"] == pytest.approx(float(binary_auroc(p, torch.tensor(y))), abs=1e-6)
    assert metrics["per_label"]["Medical material"]["auroc"]["value"] is None
    assert "| Medical material | 0/3 | n/a |" in (run / "ctrate18.md").read_text()
    submission = json.loads((run / "submission.json").read_text())
    assert len(submission["predictions"]) == len(truth)
    assert (run / "predictions.jsonl").is_file() and (run / "report.md").is_file()  # EvaluationReport's files too


def test_the_config_keeps_eval_yamls_data_file(capsys):
    """``data:`` before ``config: eval.yaml`` in eval_18label.yaml: the data file merges into it, key by key."""
    with pytest.raises(SystemExit):
        main(["test", "--config", EVAL_18, "--print_config"])
    data = yaml.safe_load(capsys.readouterr().out)["data"]["init_args"]
    expected = yaml.safe_load((ROOT / "configs" / "data" / "ct_vqa.yaml").read_text())
    assert data["protocol"] == "ctrate_18"
    for key, value in expected.items():  # nested dataclasses come back with their defaults filled in
        assert data[key] == value or value.items() <= data[key].items(), key


def test_the_protocol_report_without_the_protocol_split_is_one_line(tmp_path, synthetic_root, tiny_model_dir, capsys):
    from cli import run

    report = {"class_path": "evaluation.ctrate_protocol.CTRATEProtocolReport", "init_args": {"out_dir": str(tmp_path)}}
    args = [
        "test", "--config", str(ROOT / "configs" / "eval.yaml"), "--model.init_args.model_path", str(tiny_model_dir),
        "--data.data_dir", str(synthetic_root), "--data.num_workers", "0", "--trainer.callbacks", json.dumps([report]),
    ]  # fmt: skip
    assert run(args) == 2
    assert "error: CTRATEProtocolReport scores the 18-label protocol" in capsys.readouterr().err
