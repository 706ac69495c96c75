"""The replication experiment's one command, in smoke mode: every arm trains, exports, evaluates, compares."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from experiments.replicate import deep_merge, load_experiment, main

SPEC = str(Path(__file__).resolve().parents[2] / "configs" / "experiments" / "replication.yaml")


def test_deep_merge_replaces_lists_and_merges_dicts():
    merged = deep_merge({"a": {"b": 1, "c": [1, 2]}, "d": 1}, {"a": {"c": [3]}}, {"a": {"e": 2}})
    assert merged == {"a": {"b": 1, "c": [3], "e": 2}, "d": 1}


def test_grpo_arm_is_evaluated_with_its_sft_parent_data():
    exp = load_experiment([SPEC], smoke=False)
    grpo, nozoom = exp.arm("sft_zoom_grpo"), exp.arm("sft_nozoom")
    assert exp.arm_data(grpo)["zoom"]["layout"] == "inset" and exp.arm_data(grpo)["image_size"] == 56
    assert exp.arm_data(nozoom)["zoom"] is None
    assert len(exp.seeds) >= 3


def test_smoke_run(tmp_path, synthetic_root):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(
        yaml.safe_dump(
            {
                "data": {"data_dir": str(synthetic_root), "synthetic": None},
                "init_model": {"hidden_size": 32, "num_layers": 1},
                "smoke": {"out_dir": str(tmp_path / "out")},
                # A second test set: its own run folders and comparison (here the first 4 test questions).
                "evaluations": {"test": {}, "few": {"max_samples": 4}},
            }
        )
    )
    report = main(["--config", SPEC, "--config", str(overlay), "--smoke"])
    table = report.read_text()
    for arm in ("sft_nozoom", "sft_zoom", "sft_zoom_grpo", "sft_zoom_nothink"):
        assert arm in table
        run = tmp_path / "out" / "seed0" / "eval" / arm
        assert json.loads((run / "run.json").read_text())["name"] == arm
        assert (tmp_path / "out" / "seed0" / arm / "done.json").is_file()
    nozoom = json.loads((tmp_path / "out" / "seed0" / "eval" / "sft_nozoom" / "run.json").read_text())
    assert nozoom["zoom"] is None and nozoom["image_size"] == 56
    nothink = json.loads((tmp_path / "out" / "seed0" / "eval" / "sft_zoom_nothink" / "run.json").read_text())
    assert nothink["prompt_format"] == "no_think"
    grpo_fit = yaml.safe_load((tmp_path / "out" / "seed0" / "sft_zoom_grpo" / "fit.yaml").read_text())
    assert grpo_fit["model"]["init_args"]["model_path"].endswith("seed0/sft_zoom/model")
    comparison = json.loads((tmp_path / "out" / "comparison" / "comparison.json").read_text())
    assert comparison
    few = json.loads((tmp_path / "out" / "seed0" / "eval-few" / "sft_zoom" / "run.json").read_text())
    assert (
        few["num_samples"]
        == 4
        < json.loads((tmp_path / "out" / "seed0" / "eval" / "sft_zoom" / "run.json").read_text())["num_samples"]
    )
    assert "sft_zoom_grpo" in (tmp_path / "out" / "comparison-few" / "comparison.md").read_text()
    grpo_ckpt = tmp_path / "out" / "seed0" / "sft_zoom_grpo" / "checkpoints"
    assert json.loads((grpo_ckpt / "start.json").read_text())["monitor"] == "val/accuracy"  # its start was validated

    # The visual-reliance audit of every arm's export: per seed, then pooled over seeds.
    audit = json.loads((tmp_path / "out" / "comparison" / "audit.json").read_text())
    assert audit["problems"] == []
    rows = {(r["arm"], r["condition"]): r for r in audit["rows"]}
    assert set(rows) == {(arm, c) for arm in ("sft_nozoom", "sft_zoom", "sft_zoom_grpo", "sft_zoom_nothink")
                         for c in ("original", "blank")}  # fmt: skip
    for arm in ("sft_zoom", "sft_zoom_grpo"):
        seed_table = json.loads((tmp_path / "out" / "seed0" / "audit" / arm / "table.json").read_text())
        blank = {r["condition"]: r for r in seed_table["rows"]}["blank"]
        assert rows[arm, "blank"]["paired_vs_original"]["difference"] == pytest.approx(
            blank["paired_vs_original"]["all"]["difference"]
        )
        original = json.loads((tmp_path / "out" / "seed0" / "eval" / arm / "metrics.json").read_text())
        assert rows[arm, "original"]["accuracy"]["mean"] == pytest.approx(original["accuracy"])  # the arm's own test
    audit_md = (tmp_path / "out" / "comparison" / "audit.md").read_text()

    again = main(["--config", SPEC, "--config", str(overlay), "--smoke"])  # finished arms and audits are skipped
    assert again.read_text() == table
    assert (tmp_path / "out" / "comparison" / "audit.md").read_text() == audit_md


def test_unknown_audit_condition_is_refused(tmp_path):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"audit": {"conditions": ["original", "upside_down"]}}))
    with pytest.raises(ValueError, match="upside_down"):
        load_experiment([SPEC, str(overlay)], smoke=False)
