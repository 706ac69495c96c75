"""The candidate-views report (experiments/views_report.py): which arms use lesion masks, the target verdict on
every seed, and the paired rows against the one-slice CAM arm."""

from experiments.views_report import costs, render, uses_masks


def _row(arm: str, accuracy: list[float], masks: bool = False) -> dict:
    columns = ("accuracy", "accuracy/presence", "accuracy/abnormality", "f1/Lung nodule", "auroc")
    fixed = {"classifier_auroc": 0.7, "some_view_shows_lesion": 0.5, "image_tokens_per_prompt": 11.6, "seconds": 100.0}
    costs = {"sft_throughput_ratio": 0.8, "grpo_step_ratio": 1.2}
    return {"arm": arm, "masks": masks, **dict.fromkeys(columns, accuracy), **fixed, **costs}


def test_sources_that_use_lesion_masks():
    assert uses_masks({})  # the default builder: lesion masks
    assert uses_masks({"roi_source": {"class_path": "datamodules.roi_sources.MaskROI", "init_args": {}}})
    assert not uses_masks({"roi_source": {"class_path": "datamodules.roi_sources.MaskROI",
                                          "init_args": {"lesions": False}}})  # fmt: skip
    assert not uses_masks({"roi_source": {"class_path": "lightning_modules.roi_classifier.CAMROI"}})


def test_target_must_hold_on_every_seed_for_the_best_maskless_arm():
    result = {"n_questions": 200, "difference": 0.05, "ci_low": 0.01, "ci_high": 0.09, "p_value": 0.01}
    pair = {"a": "cam_k1_slice", "b": "cam_k4_slabs", "results": {"all": {**result, "significant": True}}}
    skipped = {"a": "oracle_k1", "b": "cam_k1_slice", "skipped": "not the same questions"}
    rows = [_row("oracle_k1", [0.7, 0.72, 0.71], masks=True), _row("cam_k1_slice", [0.6, 0.6, 0.6]),
            _row("cam_k4_slabs", [0.67, 0.65, 0.7])]  # fmt: skip
    text = render(rows, [pair, skipped], 0.66, "cam_k1_slice")
    assert "**cam_k4_slabs** (0.673 ± 0.025). accuracy ≥ 0.66 on every seed: no;" in text  # seed 1: 0.65
    assert "≤ 4× the image tokens: yes; ≤ 1.5× the GRPO step time: yes. Target **not met**" in text
    assert "| cam_k4_slabs | all | 200 | +0.050 * | [+0.010, +0.090] | 0.01 |" in text
    assert "oracle_k1 (masks)" in text and "| oracle_k1 | all" not in text
    rows[2]["accuracy"] = [0.67, 0.66, 0.7]
    assert "Target **met**" in render(rows, [pair], 0.66, "cam_k1_slice")
    rows[2]["grpo_step_ratio"] = 1.6
    assert "1.5× the GRPO step time: no. Target **not met**" in render(rows, [pair], 0.66, "cam_k1_slice")
    rows[2]["grpo_step_ratio"] = None  # a K and slab the benchmark did not measure: unknown, not a pass
    assert "1.5× the GRPO step time: not measured. Target **not met**" in render(rows, [pair], 0.66, "cam_k1_slice")


def test_costs_come_from_the_benchmark_side_with_the_same_views():
    one = {"views": {}, "sft_samples_per_s": 10.0, "grpo_step_s": 2.0}
    slabs = {"views": {"k": 4, "slab_mm": 10.0}, "sft_samples_per_s": 8.0, "grpo_step_s": 2.5}
    bench = {"results": {"1 slice": one, "4 slabs": slabs}}
    assert costs(bench, {"k": 4, "slab_mm": 10}) == {"sft_throughput_ratio": 0.8, "grpo_step_ratio": 1.25}
    assert costs(bench, None)["grpo_step_ratio"] == 1.0
    assert costs(bench, {"k": 4}) == {"sft_throughput_ratio": None, "grpo_step_ratio": None}
    assert costs(None, None)["sft_throughput_ratio"] is None
