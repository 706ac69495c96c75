"""ROI proposal sources (datamodules/roi_sources.py), the builder and datamodule using them, and their scoring."""

import json
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from datamodules.ctrate import BadSampleError, CTRATEPaths, bbox_of, load_ct_volume, read_split
from datamodules.roi_sources import AnatomyROI, MaskROI, ROIProposal, ROIQuery, check_proposal, main_lesion
from datamodules.synthetic_ctrate import SHAPE, _volume_names, generate, make_phantom
from datamodules.vqa_builder import BUILD_INFO, build_info, build_vqa, report_region, vqa_state
from datamodules.vqa_builder.__main__ import main as builder_main
from evaluation.roi_proposals import evaluate_sources, render

ROOT = Path(__file__).resolve().parents[2]
REGION_SOURCE = {"class_path": "datamodules.roi_sources.MaskROI", "init_args": {"regions_dir": "totalsegmentator"}}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("roi")
    generate(root, n=10, seed=0)
    return root


def _query(root, name: str, label: str, region: str, lesion=None) -> ROIQuery:
    split = name.split("_")[0]
    row = read_split(root, split).set_index("VolumeName").loc[name].to_dict() | {"VolumeName": name}
    volume = load_ct_volume(CTRATEPaths(root, split).volume(name), row)
    return ROIQuery(volume, name, row, root, label, region, lesion)


def test_report_region_skips_negated_sentences():
    report = "Right pleural effusion. No effusion on the left. A nodule in the lower lobe of the left lung."
    assert report_region("Pleural effusion", {"Findings_EN": report}) == "right lung"
    assert report_region("Lung nodule", {"Findings_EN": report}) == "left lower lobe"
    assert report_region("Consolidation", {"Findings_EN": report}) == "lungs"


def test_mask_roi_lesion_box_is_exact(root):
    name = _volume_names(10, 0)[0]
    lesion = np.zeros(SHAPE, bool)
    lesion[40:45, 50:53, 9:11] = True
    lesion[80:81, 60:61, 9] = True  # smaller second component on the fullest slice: not the main lesion
    p = MaskROI().propose(_query(root, name, "Lung nodule", "lungs", lesion))
    assert p == ROIProposal(9, [[40, 50, 45, 53]], "mask", "lesion")
    assert main_lesion(lesion)[0] == 9


@pytest.mark.parametrize("region", ["right lower lobe", "left upper lobe", "heart", "lungs"])
def test_region_masks_give_the_exact_box_of_the_named_region(root, region):
    names = _volume_names(10, 0)
    idx = 3
    phantom = make_phantom(np.random.default_rng([0, idx]))  # the generator's phantom of volume idx
    source = MaskROI(regions_dir="totalsegmentator", lesions=False)
    p = source.propose(_query(root, names[idx], "Lung nodule", region))
    expected = np.any([phantom.regions[s] for s in source.structures[region]], axis=0)
    k = int(np.argmax(expected.sum(axis=(0, 1))))
    assert p is not None and p.source == "region_mask" and p.region == region
    assert (p.slice_index, p.boxes) == (k, [bbox_of(expected[:, :, k].T)])


def test_region_masks_missing_means_no_proposal(root):
    name = _volume_names(10, 0)[0]
    assert MaskROI(regions_dir="no-such-dir", lesions=False).propose(_query(root, name, "Lung nodule", "lungs")) is None
    assert MaskROI().propose(_query(root, name, "Lung nodule", "lungs")) is None  # no regions_dir, no lesion


def test_check_proposal_refuses_boxes_outside_or_empty():
    volume = torch.zeros(1, 128, 96, 8)  # (1, X, Y, Z): display slices are 96 rows × 128 columns
    ok = ROIProposal(3, [[0, 0, 128, 96]], "anatomy", "lungs")
    assert check_proposal(ok, volume, "v") is ok
    for bad in (
        ROIProposal(3, [[0, 0, 96, 128]], "cam", "cam"),  # x and y swapped
        ROIProposal(3, [[0, 0, 129, 4]], "cam", "cam"),
        ROIProposal(3, [[5, 5, 5, 9]], "cam", "cam"),
        ROIProposal(8, [[0, 0, 4, 4]], "cam", "cam"),
        ROIProposal(3, [], "cam", "cam"),
    ):
        with pytest.raises(BadSampleError, match="v: cam ROI"):
            check_proposal(bad, volume, "v")


def test_builder_with_anatomy_source_boxes_presence_and_abnormality_by_anatomy(root, tmp_path):
    paths = build_vqa(root, tmp_path / "vqa-anatomy", seed=0, roi_source=AnatomyROI())
    recs = [json.loads(line) for p in paths.values() for line in p.read_text().splitlines()]
    kinds = Counter((r["question_type"], r["roi_source"]) for r in recs)
    assert kinds[("presence", "anatomy")] > 0 and kinds[("abnormality", "anatomy")] > 0
    assert not {qt for qt, src in kinds if src != "anatomy"} - {"location", "size", "count"}
    presence = Counter(r["answer"] for r in recs if r["question_type"] == "presence")
    assert presence["yes"] == presence["no"] > 0
    for r in recs:
        for x0, y0, x1, y1 in r["roi"]:
            assert 0 <= x0 < x1 <= SHAPE[0] and 0 <= y0 < y1 <= SHAPE[1]
    info = json.loads((tmp_path / "vqa-anatomy" / BUILD_INFO).read_text())
    assert info["roi_source"]["class_path"] == "datamodules.roi_sources.AnatomyROI"


def test_builder_command_line_takes_a_roi_source(root, tmp_path, capsys):
    builder_main(["--root", str(root), "--out", str(tmp_path / "v"), "--roi_source", json.dumps(REGION_SOURCE)])
    assert "presence" in capsys.readouterr().out
    info = json.loads((tmp_path / "v" / BUILD_INFO).read_text())
    assert info["roi_source"]["init_args"]["regions_dir"] == "totalsegmentator"


def test_datamodule_builds_vqa_with_its_source_and_refuses_another(root, tmp_path, tiny_model_dir):
    from datamodules.ct_vqa import CTVQADataModule
    from datamodules.synthetic import SyntheticData

    vqa_dir = tmp_path / "vqa-regions"
    common = dict(
        data_dir=str(root),
        vqa_dir=str(vqa_dir),
        processor_path=str(tiny_model_dir),
        max_samples=4,
        synthetic=SyntheticData(n=10, seed=0),  # data_dir exists: only the VQA files are built
    )
    dm = CTVQADataModule(**common, roi_source=MaskROI(regions_dir="totalsegmentator", lesions=False))
    dm.prepare_data()
    dm.setup("fit")
    assert (vqa_dir / "train.jsonl").is_file() and len(dm.datasets["train"]) == 4
    assert "roi_source" not in dm.hparams  # an object with caches: not for checkpoints
    with pytest.raises(BadSampleError, match="built with roi_source datamodules.roi_sources.MaskROI"):
        CTVQADataModule(**common, roi_source=AnatomyROI()).prepare_data()
    with pytest.raises(BadSampleError, match="built with roi_source"):
        CTVQADataModule(**common).prepare_data()  # no source named means the default one, which it is not


def test_vqa_folders_without_a_finished_build_are_rebuilt_or_refused(root, tmp_path):
    from datamodules.ct_vqa import CTVQADataModule
    from datamodules.synthetic import SyntheticData

    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "train.jsonl").write_text("")  # built before build.json existed: by the default source
    assert vqa_state(legacy, None) == "built"
    with pytest.raises(BadSampleError, match="legacy/build.json: these VQA files were built with"):
        vqa_state(legacy, AnatomyROI())

    interrupted = tmp_path / "interrupted"
    interrupted.mkdir()
    (interrupted / BUILD_INFO).write_text(json.dumps(build_info(0, None, complete=False)))
    (interrupted / "train.jsonl").write_text("half")
    assert vqa_state(interrupted, None) == "missing"
    with pytest.raises(BadSampleError, match="python -m datamodules.vqa_builder --root .* --roi_source"):
        CTVQADataModule(data_dir=str(root), vqa_dir=str(interrupted), roi_source=AnatomyROI()).prepare_data()
    CTVQADataModule(data_dir=str(root), vqa_dir=str(interrupted), synthetic=SyntheticData(n=10)).prepare_data()
    assert vqa_state(interrupted, None) == "built" and (interrupted / "train.jsonl").read_text() != "half"
    assert not list(interrupted.glob("*.tmp"))


def test_scores_of_sources_against_true_lesions(root, tmp_path):
    sources = {"mask": MaskROI(), "regions": MaskROI(regions_dir="totalsegmentator", lesions=False)}
    results = evaluate_sources(root, "train", sources)
    assert results["mask"]["n"] == results["regions"]["n"] > 0
    assert results["mask"]["all"] == {"iou>0.3": 1.0, "centre_hit": 1.0, "slice_hit": 1.0, "mean_iou": 1.0}
    assert 0.0 <= results["regions"]["all"]["iou>0.3"] < 1.0
    # The heart mask is the lesion there: exact. (Cardiomegaly is in this synthetic train split.)
    assert results["regions"]["per_label"]["Cardiomegaly"]["iou>0.3"] == 1.0
    assert "| regions |" in render(results)


def test_experiment_configs_name_every_source():
    from evaluation.roi_proposals import parser
    from experiments.replicate import load_experiment
    from lightning_modules.roi_classifier import CAMROI

    configs = ROOT / "configs" / "experiments"
    p = parser()
    args = p.instantiate(p.parse_args(["--config", str(configs / "roi_proposals.yaml")]))
    assert [type(s) for s in args.sources.values()] == [MaskROI, MaskROI, AnatomyROI, CAMROI]
    exp = load_experiment([str(configs / "replication.yaml"), str(configs / "roi_sources.yaml")], smoke=False)
    vqa_dirs = [arm.data.get("vqa_dir") for arm in exp.arms]
    assert len(exp.arms) == 4 and len(set(vqa_dirs)) == 4  # one VQA folder per source
    assert all(exp.arm_data(arm)["image_size"] == 56 for arm in exp.arms)  # the replication's settings


def test_region_masks_off_the_grid_or_unreadable_are_refused_naming_the_file(root, tmp_path):
    name = _volume_names(10, 0)[0]
    folder = tmp_path / "regions" / name.removesuffix(".nii.gz")
    folder.mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.ones((128, 128, 16), np.uint8), np.eye(4)), folder / "heart.nii.gz")
    source = MaskROI(regions_dir=str(tmp_path / "regions"), lesions=False)
    query = _query(root, name, "Cardiomegaly", "heart")
    for _ in range(2):  # the off-grid mask is not cached for the next question either
        with pytest.raises(BadSampleError, match=r"heart.nii.gz: mask grid \(128, 128, 16\) differs from the CT"):
            source.propose(query)
    noise = np.random.default_rng(0).integers(0, 255, size=SHAPE, dtype=np.uint8)
    nib.save(nib.Nifti1Image(noise, np.eye(4)), folder / "aorta.nii.gz")
    data = (folder / "aorta.nii.gz").read_bytes()
    (folder / "aorta.nii.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(BadSampleError, match=r"aorta.nii.gz: cannot read NIfTI \(EOFError"):
        source.propose(_query(root, name, "Arterial wall calcification", "aorta"))
