"""Evaluation reporting (evaluation/plots.py, comparison_plot.py, report.py, compare.py) on small hand-made run
data, real matplotlib."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from common.files import atomic_write_text
from evaluation.compare import aggregate, load_run, main, render_comparison, write_comparison
from evaluation.comparison_plot import plot_comparison
from evaluation.plots import plot_abnormality_f1, plot_calibration, plot_confusion_matrices
from evaluation.report import render_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NAN = float("nan")


def _row(i: int, qtype: str, truth: str, answer: str | None, options: list[str], **kw) -> dict:
    valid = answer in options
    return {
        "id": f"q{i}",
        "question_type": qtype,
        "question": f"Question {i} about the {qtype} | with a pipe?",
        "options": options,
        "truth": truth,
        "completion": f"<think>look</think><answer>{answer}</answer>",
        "reasoning": "Looked at the lower lobes. " * 30,
        "answer": answer,
        "correct": answer == truth,
        "formatted": answer is not None,
        "valid": valid,
        "abnormality": kw.get("abnormality"),
        "p_yes": kw.get("p_yes"),
        "volume_name": f"train_{i}_a_1.nii.gz",
    }


@pytest.fixture()
def predictions() -> list[dict]:
    yn = ["yes", "no"]
    sides = ["left", "right", "bilateral"]
    return [
        _row(0, "presence", "yes", "yes", yn, abnormality="Emphysema", p_yes=0.9),
        _row(1, "presence", "no", "yes", yn, abnormality="Emphysema", p_yes=0.7),
        _row(2, "presence", "no", "no", yn, abnormality="Atelectasis", p_yes=0.2),
        _row(3, "location", "left", "right", sides),
        _row(4, "location", "right", None, sides),  # unformatted: no answer parsed
        _row(5, "location", "bilateral", "upper", sides),  # formatted but not an option
        _row(6, "location", "bilateral", "bilateral", sides),
    ]


@pytest.fixture()
def metrics() -> dict:
    return {
        "accuracy": 3 / 7,
        "chance": 0.4048,
        "format_rate": 6 / 7,
        "validity_rate": 5 / 7,
        "accuracy/presence": 2 / 3,
        "n/presence": 3,
        "accuracy/location": 0.25,
        "n/location": 4,
        "macro_f1": 0.5,
        "micro_f1": 0.6,
        "auroc": NAN,  # e.g. one class absent
        "auprc": 0.75,
        "ece": 0.123456,
        "bleu": None,  # NaN as stored in metrics.json (null)
        "per_abnormality": {
            "Emphysema": {"precision": 0.5, "recall": 1.0, "f1": 0.6667, "support": 1, "auroc": NAN, "auprc": 1.0},
            "Atelectasis": {"precision": NAN, "recall": NAN, "f1": NAN, "support": 0, "auroc": NAN, "auprc": NAN},
            "Cardiomegaly": {"precision": 0.8, "recall": 0.4, "f1": 0.5333, "support": 5, "auroc": 0.7, "auprc": 0.6},
        },
        "calibration": {
            "bin_edges": [0.0, 0.25, 0.5, 0.75, 1.0],
            "mean_confidence": [0.2, NAN, 0.7, 0.9],
            "fraction_positive": [0.0, NAN, 0.0, 1.0],
            "count": [1, 0, 1, 1],
        },
    }


@pytest.fixture()
def info() -> dict:
    return {
        "name": "sft_zoom",
        "model": "lightning_modules.sft.SFTModule",
        "model_path": "/models/qwen2.5-vl-3b",
        "ckpt_path": "runs/sft/last.ckpt",
        "split": "valid",
        "num_samples": 7,
        "seed": 3,
        "data_seed": 0,
        "created": "2025-01-01T00:00:00",
        "command": "python cli.py test --config configs/sft.yaml --ckpt_path runs/sft/last.ckpt",
    }


def _assert_png(path: Path) -> None:
    data = Path(path).read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 2000  # an actual drawing, not an empty canvas
    assert not list(Path(path).parent.glob(".*.tmp")), "temp file left behind"


def test_plots_write_pngs(tmp_path, metrics, predictions):
    written = [
        plot_abnormality_f1(metrics["per_abnormality"], tmp_path / "f1.png"),
        plot_confusion_matrices(predictions, tmp_path / "sub" / "confusion.png"),
        plot_calibration(metrics["calibration"], tmp_path / "calibration.png", ece=metrics["ece"]),
        plot_calibration(metrics["calibration"], tmp_path / "calibration_no_ece.png"),
        plot_comparison(
            [
                {"name": "a", "metrics": {"accuracy": (0.8, 0.05), "auroc": (NAN, NAN), "format_rate": (1.0, 0.0)}},
                {"name": "b", "metrics": {"accuracy": (0.6, 0.0), "macro_f1": 0.4}},
            ],
            tmp_path / "comparison.png",
        ),
    ]
    assert [p.name for p in written] == [
        "f1.png",
        "confusion.png",
        "calibration.png",
        "calibration_no_ece.png",
        "comparison.png",
    ]
    for p in written:
        _assert_png(p)


def test_plots_handle_empty_inputs(tmp_path):
    _assert_png(plot_abnormality_f1({}, tmp_path / "f1.png"))
    _assert_png(plot_confusion_matrices([], tmp_path / "confusion.png"))
    _assert_png(plot_comparison([], tmp_path / "comparison.png"))


def test_confusion_counts_invalid_answers():
    from evaluation.plots import INVALID, _confusion

    rows = [
        _row(0, "location", "left", "right", ["left", "right"]),
        _row(1, "location", "right", None, ["left", "right"]),
        _row(2, "location", "right", "upper", ["left", "right"]),
        _row(3, "location", "right", "right", ["left", "right"]),
    ]
    truths, cols, counts = _confusion(rows)
    assert truths == ["left", "right"]
    assert cols == ["left", "right", INVALID]
    assert counts.tolist() == [[0, 1, 0], [0, 1, 2]]


def _ids(section: str) -> list[str]:
    return [line.split("**")[1] for line in section.splitlines() if line.startswith("- **")]


def test_render_report(metrics, predictions, info):
    plots = {"abnormality_f1": "plots/abnormality_f1.png", "calibration": "plots/calibration.png"}
    md = render_report(metrics, predictions, info, plots)
    assert md.startswith("# Evaluation report: sft_zoom\n")
    assert info["command"] in md
    assert "runs/sft/last.ckpt" in md and "/models/qwen2.5-vl-3b" in md
    # Per-type rows: n, accuracy, chance (from the options), Δ.
    assert "| presence | 3 | 0.667 | 0.500 | +0.167 |" in md
    assert "| location | 4 | 0.250 | 0.333 | -0.083 |" in md
    assert "| AUROC (presence, P(yes)) | – |" in md  # NaN
    assert "| BLEU (reasoning) | – |" in md  # null
    assert "| ROUGE-L (reasoning) | – |" in md  # missing
    assert "| ECE (presence, P(yes)) | 0.123 |" in md
    assert "| Accuracy − chance | +0.024 |" in md
    # Most supported abnormality first; NaN precision shows as a dash.
    assert md.index("| Cardiomegaly |") < md.index("| Emphysema |") < md.index("| Atelectasis |")
    assert "| Atelectasis | – | – | – | 0 | – | – |" in md
    assert "![F1 per abnormality](plots/abnormality_f1.png)" in md
    # Cases: per question type in report order, wrong then right, each with its image link or a note.
    cases = md.split("## Cases")[1]
    presence, location = cases.split("### presence")[1].split("### location")
    p_wrong, p_right = presence.split("#### Wrong")[1].split("#### Right")
    assert _ids(p_wrong) == ["q1"] and _ids(p_right) == ["q0", "q2"]
    l_wrong, l_right = location.split("#### Wrong")[1].split("#### Right")
    assert len(_ids(l_wrong)) == 2 and set(_ids(l_wrong)) < {"q3", "q4", "q5"} and _ids(l_right) == ["q6"]
    assert cases.count("Image: not available") == 6
    with_image = render_report(metrics, predictions, info, {}, images={"q1": "cases/q1.png"})
    assert "- Image the model saw: ![q1](cases/q1.png)" in with_image
    assert "(unformatted)" in render_report(metrics, [predictions[4]], info, {})
    assert "(not an option)" in render_report(metrics, [predictions[5]], info, {})
    assert "\\| with a pipe" in md
    assert "…" in md and "Looked at the lower lobes. " * 30 not in md


def test_render_report_relative_to_base_dir(tmp_path, metrics, info):
    md = render_report(metrics, [], info, {"confusion": tmp_path / "plots" / "c.png"}, base_dir=tmp_path)
    assert "](plots/c.png)" in md
    assert "## Cases" not in md


def test_atomic_write_text_replaces(tmp_path):
    path = tmp_path / "a" / "x.md"
    atomic_write_text(path, "one")
    atomic_write_text(path, "two ✓")
    assert path.read_text(encoding="utf-8") == "two ✓"
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.md"]


def _write_run(root: Path, folder: str, name: str, seed: int | None, metrics: dict) -> Path:
    run = root / folder
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "run.json").write_text(json.dumps({"name": name, "seed": seed, "split": "valid"}))
    return run


@pytest.fixture()
def run_dirs(tmp_path) -> list[Path]:
    return [
        _write_run(
            tmp_path,
            "zoom_s0",
            "sft_zoom",
            0,
            {"accuracy": 0.80, "accuracy/presence": 0.9, "auroc": 0.7, "format_rate": 1.0, "per_abnormality": {}},
        ),
        _write_run(tmp_path, "base_s0", "sft_base", 0, {"accuracy": 0.5, "auroc": None, "format_rate": 0.9}),
        _write_run(tmp_path, "zoom_s1", "sft_zoom", 1, {"accuracy": 0.85, "accuracy/presence": 0.8, "auroc": NAN}),
        _write_run(tmp_path, "zoom_s2", "sft_zoom", 2, {"accuracy": 0.90, "accuracy/presence": 0.7, "auroc": 0.8}),
    ]


def test_aggregate_mean_std_nan_and_order(run_dirs):
    groups = aggregate([load_run(d) for d in run_dirs])
    assert [g["name"] for g in groups] == ["sft_zoom", "sft_base"]
    zoom, base = groups
    assert zoom["n_runs"] == 3 and zoom["seeds"] == [0, 1, 2]
    acc = zoom["metrics"]["accuracy"]
    # mean(0.80, 0.85, 0.90) = 0.85; sample std = sqrt((0.05² + 0 + 0.05²) / 2) = 0.05
    assert acc["mean"] == pytest.approx(0.85) and acc["std"] == pytest.approx(0.05) and acc["n"] == 3
    assert zoom["metrics"]["accuracy/presence"]["std"] == pytest.approx(0.1)
    # NaN ignored: mean(0.7, 0.8) = 0.75, std = sqrt(2 * 0.05² / 1) = 0.0707...
    auroc = zoom["metrics"]["auroc"]
    assert auroc["mean"] == pytest.approx(0.75) and auroc["std"] == pytest.approx(math.sqrt(0.005)) and auroc["n"] == 2
    # Missing in two runs: only the one value counts.
    assert zoom["metrics"]["format_rate"] == {"mean": 1.0, "std": 0.0, "n": 1}
    assert "per_abnormality" not in zoom["metrics"]
    # Single run: std 0.0; all-NaN: NaN.
    assert base["n_runs"] == 1 and base["metrics"]["accuracy"] == {"mean": 0.5, "std": 0.0, "n": 1}
    assert math.isnan(base["metrics"]["auroc"]["mean"]) and math.isnan(base["metrics"]["auroc"]["std"])


def test_render_comparison(run_dirs):
    md = render_comparison(aggregate([load_run(d) for d in run_dirs]))
    header = md.splitlines()[0]
    assert header == "| Run | accuracy | accuracy/presence | format_rate | auroc |"
    assert "| sft_zoom | 0.850 ± 0.050 (n=3) | 0.800 ± 0.100 (n=3) | 1.000 (n=1) | 0.750 ± 0.071 (n=2) |" in md
    assert "| sft_base | 0.500 | – | 0.900 | – |" in md
    assert "`" + str(run_dirs[2]) + "` (seed 1)" in md
    md_custom = render_comparison(aggregate([load_run(run_dirs[1])]), ["accuracy", "macro_f1"])
    assert md_custom.splitlines()[2] == "| sft_base | 0.500 | – |"


def test_write_comparison_files(tmp_path, run_dirs):
    out = tmp_path / "cmp"
    md_path = write_comparison(run_dirs, out)
    assert md_path == out / "comparison.md"
    assert sorted(p.name for p in out.iterdir()) == [
        "comparison.json",
        "comparison.md",
        "comparison.png",
        "paired.json",
    ]
    assert "| sft_zoom | 0.850 ± 0.050 (n=3)" in md_path.read_text()
    assert "![Run comparison](comparison.png)" in md_path.read_text()
    groups = json.loads((out / "comparison.json").read_text())  # strict JSON: NaN stored as null
    assert [g["name"] for g in groups] == ["sft_zoom", "sft_base"]
    assert groups[0]["metrics"]["accuracy"]["mean"] == pytest.approx(0.85)
    assert groups[1]["metrics"]["auroc"]["mean"] is None
    _assert_png(out / "comparison.png")


def test_main_cli(tmp_path, run_dirs, capsys):
    out = tmp_path / "cli_out"
    path = main([*map(str, run_dirs), "--out", str(out)])
    assert path == out / "comparison.md" and path.is_file()
    printed = capsys.readouterr().out
    assert "sft_zoom" in printed and "comparison.md" in printed


def test_main_cli_missing_run_exits(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        main([str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert done.value.code == 2
    assert "nope" in capsys.readouterr().err


def test_load_run_errors(tmp_path):
    run = tmp_path / "run_a"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"name": "x"}))
    with pytest.raises(FileNotFoundError, match=r"run_a.*metrics\.json"):
        load_run(run)
    (run / "metrics.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"run_a.*metrics\.json"):
        load_run(run)
    (run / "metrics.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        load_run(run)
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        load_run(tmp_path / "missing_dir")
