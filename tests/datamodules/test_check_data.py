"""The data checker (datamodules/check_data.py): clean data pass; every planted problem is named, in one run."""

from __future__ import annotations

import gzip
import json
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from datamodules import check_data as cd
from datamodules.ctrate import (
    SPLITS,
    BadSampleError,
    CTRATEPaths,
    VolumeCache,
    display_path,
    load_ct_volume,
    read_metadata,
    read_split,
)
from datamodules.vqa_builder import build_split

TRAIN_KEEP, VALID_KEEP = 4, 2


def _small_copy(src: Path, dst: Path) -> Path:
    """The first few volumes of each split of the shared fixture (CSVs, NIfTIs, VQA lines), copied to ``dst``:
    tests corrupt the copy, never the fixture."""
    keep: set[str] = set()
    for split, n in zip(SPLITS, (TRAIN_KEEP, VALID_KEEP), strict=True):
        s, d = CTRATEPaths(src, split), CTRATEPaths(dst, split)
        names = sorted(pd.read_csv(s.metadata_csv)["VolumeName"])[:n]
        keep |= set(names)
        for a, b in ((s.metadata_csv, d.metadata_csv), (s.labels_csv, d.labels_csv), (s.reports_csv, d.reports_csv)):
            b.parent.mkdir(parents=True, exist_ok=True)
            df = pd.read_csv(a)
            df[df["VolumeName"].isin(names)].to_csv(b, index=False)
        for name in names:
            d.volume(name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(s.volume(name), d.volume(name))
    (dst / "vqa").mkdir()
    for split in SPLITS:
        lines = (src / "vqa" / f"{split}.jsonl").read_text().splitlines()
        kept = [line for line in lines if json.loads(line)["volume_name"] in keep]
        (dst / "vqa" / f"{split}.jsonl").write_text("\n".join(kept) + "\n")
    return dst


@pytest.fixture
def small_root(synthetic_root: Path, tmp_path: Path) -> Path:
    return _small_copy(synthetic_root, tmp_path / "ctrate")


def _keys(problems: list[cd.Problem], root: Path) -> set[tuple[str, str, int | None, str | None]]:
    return {(p.check, Path(p.path).relative_to(root).as_posix(), p.line, p.field) for p in problems}


def test_clean_data_has_no_problems(small_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cd.check_data(small_root) == []
    assert cd.main(["--data_dir", str(small_root)]) == 0
    assert "no problems" in capsys.readouterr().out


def _corrupt(root: Path) -> dict[str, str]:
    """Plant one of each problem; returns the volume names used, by role."""
    train, valid = CTRATEPaths(root, "train"), CTRATEPaths(root, "valid")
    meta = pd.read_csv(train.metadata_csv)
    t1, t2, t3, t4 = meta["VolumeName"]
    # A truncated download.
    data = train.volume(t1).read_bytes()
    train.volume(t1).write_bytes(data[: len(data) // 2])
    # Stored values scaled by 10: the loader still rescales them, and bone ends far above any HU.
    img = nib.load(train.volume(t2))
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj) * 10, img.affine), train.volume(t2))
    # A raw volume whose metadata says it is already HU: never rescaled, no air.
    meta.loc[2, "RescaleIntercept"] = 0
    meta.to_csv(train.metadata_csv, index=False)
    labels = pd.read_csv(train.labels_csv)
    labels.loc[labels["VolumeName"] == t4, "Cardiomegaly"] = 2
    labels.to_csv(train.labels_csv, index=False)
    pd.read_csv(valid.labels_csv).drop(columns=["Emphysema"]).to_csv(valid.labels_csv, index=False)
    # A valid row with a bad ZSpacing, and a train patient in the valid split (CSV line 4).
    vmeta = pd.read_csv(valid.metadata_csv).astype({"ZSpacing": object})
    vmeta.loc[0, "ZSpacing"] = "abc"
    pd.concat([vmeta, meta[meta["VolumeName"] == t4]]).to_csv(valid.metadata_csv, index=False)

    vqa = root / "vqa"
    lines = (vqa / "train.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    lines[1] = "{not json"
    lines[2] = json.dumps({**records[2], "slice_index": "3"})
    lines[3] = json.dumps({**records[3], "roi": [[100, 100, 200, 120]]})  # past the 128-pixel width
    lines[4] = json.dumps({**records[4], "slice_index": 40})  # 32 slices
    lines[5] = json.dumps({**records[5], "volume_name": "train_999_a_1.nii.gz", "patient_id": "train_999"})
    (vqa / "train.jsonl").write_text("\n".join(lines) + "\n")
    leak = next(r for r in records if r["volume_name"] == t4)
    with (vqa / "valid.jsonl").open("a") as f:
        f.write(json.dumps(leak) + "\n")
    return {"t1": t1, "t2": t2, "t3": t3, "t4": t4}


def test_every_planted_problem_is_reported_in_one_run(small_root: Path) -> None:
    names = _corrupt(small_root)
    problems = cd.check_data(small_root)
    valid_lines = len((small_root / "vqa" / "valid.jsonl").read_text().splitlines())
    vol = {k: CTRATEPaths(small_root, "train").volume(v).relative_to(small_root).as_posix() for k, v in names.items()}
    expected = {
        ("csv", "dataset/multi_abnormality_labels/train_predicted_labels.csv", 5, "Cardiomegaly"),
        ("csv", "dataset/metadata/validation_metadata.csv", 2, "ZSpacing"),
        ("csv", "dataset/multi_abnormality_labels/valid_predicted_labels.csv", None, "Emphysema"),
        ("volumes", vol["t1"], None, None),
        ("volumes", vol["t2"], None, None),
        ("volumes", vol["t3"], None, None),
        ("vqa", "vqa/train.jsonl", 2, None),
        ("vqa", "vqa/train.jsonl", 3, "slice_index"),
        ("vqa", "vqa/train.jsonl", 6, "volume_name"),
        ("roi", "vqa/train.jsonl", 4, "roi"),
        ("roi", "vqa/train.jsonl", 5, "slice_index"),
        # A train volume in the validation tables: refused by the same checks the loaders apply.
        ("csv", "dataset/metadata/validation_metadata.csv", 4, "VolumeName"),
        ("vqa", "vqa/valid.jsonl", valid_lines, "split"),
    }
    assert _keys(problems, small_root) == expected
    text = {(p.check, Path(p.path).name, p.line): p.message for p in problems}
    assert "cannot read NIfTI" in text["volumes", names["t1"], None]
    assert f"above {cd.MAX_HU:g}" in text["volumes", names["t2"], None]
    assert f"no voxel below {cd.AIR_HU:g}" in text["volumes", names["t3"], None]
    assert "not valid JSON" in text["vqa", "train.jsonl", 2]
    assert "128×128 slice" in text["roi", "train.jsonl", 4]
    assert "32 slices" in text["roi", "train.jsonl", 5]
    assert "is a volume of split 'train', not of this table's 'valid'" in text["csv", "validation_metadata.csv", 4]
    assert "is not this file's split 'valid'" in text["vqa", "valid.jsonl", valid_lines]


def test_command_line_reports_and_fails(small_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _corrupt(small_root)
    assert cd.main(["--data_dir", str(small_root), "--splits", "train", "valid"]) == 1
    out = capsys.readouterr().out
    assert f"{small_root / 'vqa' / 'train.jsonl'}:4: field 'roi': [100, 100, 200, 120] is outside" in out
    assert "summary: csv 4, volumes 3, vqa 4, roi 2; 13 problem(s)" in out


def test_unreadable_files_are_problems_not_crashes(small_root: Path) -> None:
    CTRATEPaths(small_root, "train").metadata_csv.write_bytes(gzip.compress(b"\xff" * 64))
    (small_root / "vqa" / "valid.jsonl").write_bytes(b"\xff\xfe not utf-8\n")
    (small_root / "vqa" / "train.jsonl").unlink()
    keys = _keys(cd.check_data(small_root), small_root)
    assert ("csv", "dataset/metadata/train_metadata.csv", None, None) in keys
    assert ("vqa", "vqa/valid.jsonl", 1, None) in keys  # read_vqa_jsonl reports a non-UTF-8 line as a bad line
    assert ("vqa", "vqa/train.jsonl", None, None) in keys


def test_max_volumes_samples_per_split(small_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loaded: list[str] = []

    def counting_load(path, meta):
        loaded.append(Path(path).name)
        return load_ct_volume(path, meta)

    monkeypatch.setattr(cd, "load_ct_volume", counting_load)
    assert cd.check_data(small_root, max_volumes=1) == []
    assert sorted(name.split("_")[0] for name in loaded) == ["train", "valid"]


@pytest.mark.parametrize("orientation", ["[1, 0, 0, 0, 1, 0]", "[0, 1, 0, 1, 0, 0]", "[1, 0, 0, 0, 0, -1]"])
def test_header_shape_is_the_loaders_shape(tmp_path: Path, orientation: str) -> None:
    path = tmp_path / "train_1_a_1.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 6, 4), np.int16), np.eye(4)), path)
    meta = {
        "VolumeName": path.name,
        "RescaleSlope": 1,
        "RescaleIntercept": -1024,
        "XYSpacing": "[0.7, 0.7]",
        "ZSpacing": 1.5,
        "ImagePositionPatient": "[0, 0, 0]",
        "ImageOrientationPatient": orientation,
    }
    assert cd.lps_shape(path, meta) == tuple(load_ct_volume(path, meta).shape[1:])


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ([-1024.0, 40.0, 1500.0], None),
        ([0.0, 1000.0], "no voxel below"),
        ([-5000.0, 0.0], "below"),
        ([-1000, 9e3], "above"),
    ],
)
def test_hu_thresholds(values: list[float], fragment: str | None) -> None:
    import torch

    found = cd.hu_problems(torch.tensor(values))
    assert found == [] if fragment is None else any(fragment in m for m in found)


def test_csv_lines_count_quoted_newlines(small_root: Path) -> None:
    reports = CTRATEPaths(small_root, "train").reports_csv
    df = pd.read_csv(reports)
    df.loc[0, "Findings_EN"] = "first line\nsecond line"  # row 1 spans CSV lines 2-3
    df.loc[1, "VolumeName"] = "not-a-volume"
    df.to_csv(reports, index=False)
    keys = _keys(cd.check_data(small_root, splits=["train"]), small_root)
    assert keys == {("csv", "dataset/radiology_text_reports/train_reports.csv", 4, "VolumeName")}


# One problem of each kind the data checks know, planted alone: the data check and the loaders report it with the
# same file, line, field and words (datamodules/data_checks.py is the one source of both).
def _nan_block(root: Path, name: str) -> None:
    """float32 with a 40×40 block of NaN on every slice, as resampling tools write outside the field of view."""
    path = CTRATEPaths(root, "train").volume(name)
    img = nib.load(path)
    arr = np.asarray(img.dataobj).astype(np.float32)
    arr[:40, :40, :] = np.nan
    nib.save(nib.Nifti1Image(arr, img.affine), path)


def _scaled(root: Path, name: str) -> None:
    path = CTRATEPaths(root, "train").volume(name)
    img = nib.load(path)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj) * 10, img.affine), path)


def _truncated(root: Path, name: str) -> None:
    path = CTRATEPaths(root, "train").volume(name)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _set(table: str, row: int, column: str, value: object) -> Callable[[Path, str], None]:
    def plant(root: Path, name: str) -> None:
        path = getattr(CTRATEPaths(root, "train"), table)
        df = pd.read_csv(path).astype({column: object})
        df.loc[row, column] = value
        df.to_csv(path, index=False)

    return plant


def _repeat(table: str) -> Callable[[Path, str], None]:
    def plant(root: Path, name: str) -> None:
        path = getattr(CTRATEPaths(root, "train"), table)
        df = pd.read_csv(path)
        pd.concat([df, df.iloc[[0]]]).to_csv(path, index=False)

    return plant


def _unknown_label_row(root: Path, name: str) -> None:
    path = CTRATEPaths(root, "train").labels_csv
    df = pd.read_csv(path)
    pd.concat([df, df.iloc[[0]].assign(VolumeName="train_999_a_1.nii.gz")]).to_csv(path, index=False)


def _mask_off_grid(root: Path, name: str) -> None:
    """A lesion mask with half the CT's slices, and the finding that makes the builder read it."""
    paths = CTRATEPaths(root, "train")
    paths.lesion_mask(name).parent.mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.ones((128, 128, 16), np.uint8), np.eye(4)), paths.lesion_mask(name))
    paths.grounding_json.write_text(json.dumps({"train": [{"name": name, "findings": {"0": "A nodule."}}]}))


PLANTS: dict[str, tuple[Callable[[Path, str], None], str]] = {
    # kind: (plant, the problem's file, as "<table>" for a CSV or "volume" / "mask" for the first train volume's)
    "NaN voxels": (_nan_block, "volume"),
    "implausible HU": (_scaled, "volume"),
    "unreadable volume": (_truncated, "volume"),
    "metadata number": (_set("metadata_csv", 1, "RescaleSlope", 0), "metadata_csv"),
    "geometry": (_set("metadata_csv", 2, "XYSpacing", "[0.7]"), "metadata_csv"),
    "orientation": (_set("metadata_csv", 0, "ImageOrientationPatient", "[1, 0, 0, 1, 0, 0]"), "metadata_csv"),
    "label value": (_set("labels_csv", 3, "Cardiomegaly", 2), "labels_csv"),
    "labels listed twice": (_repeat("labels_csv"), "labels_csv"),
    "reports listed twice": (_repeat("reports_csv"), "reports_csv"),
    "metadata listed twice": (_repeat("metadata_csv"), "metadata_csv"),
    "malformed VolumeName": (_set("reports_csv", 1, "VolumeName", "not-a-volume"), "reports_csv"),
    "volume of another split": (_set("reports_csv", 1, "VolumeName", "valid_1_a_1.nii.gz"), "reports_csv"),
    "label without metadata": (_unknown_label_row, "labels_csv"),
    "mask off the grid": (_mask_off_grid, "mask"),
}


def _loader_error(root: Path) -> str | None:
    """The first problem the training readers raise: tables (read_split for the slice classifier and the builder,
    read_metadata for the VQA datamodule), every volume through the VolumeCache, then the builder (lesion masks)."""
    try:
        for split in SPLITS:
            read_split(root, split)
            cache = VolumeCache(root, 0)
            for name, row in read_metadata(root, split).items():
                cache.get(name, row)
        if CTRATEPaths(root).grounding_json.is_file():
            build_split(root, "train", seed=0)
    except BadSampleError as e:
        return str(e)
    return None


@pytest.mark.parametrize("kind", list(PLANTS))
def test_data_check_and_loaders_report_the_same_problem(small_root: Path, kind: str) -> None:
    plant, where = PLANTS[kind]
    paths = CTRATEPaths(small_root, "train")
    name = sorted(pd.read_csv(paths.metadata_csv)["VolumeName"])[0]
    assert _loader_error(small_root) is None
    plant(small_root, name)
    problems = cd.check_data(small_root)
    assert len(problems) == 1, problems
    problem = problems[0]
    file = {"volume": paths.volume(name), "mask": paths.lesion_mask(name)}.get(where) or getattr(paths, where)
    assert Path(problem.path) == file
    assert (problem.line is None) == (where in ("volume", "mask"))
    # The loader's message is the data check's line, word for word (with the path from dataset/ on).
    assert _loader_error(small_root) == str(replace(problem, path=display_path(problem.path)))


def test_listed_twice_names_both_lines(small_root: Path) -> None:
    labels = CTRATEPaths(small_root, "train").labels_csv
    df = pd.read_csv(labels)
    pd.concat([df, df.iloc[[0]]]).to_csv(labels, index=False)
    name = df["VolumeName"].iloc[0]
    expected = (
        f"dataset/multi_abnormality_labels/train_predicted_labels.csv:6: field 'VolumeName': {name!r} is listed again "
        "(first on line 2)"
    )
    with pytest.raises(BadSampleError) as err:
        read_split(small_root, "train")
    assert str(err.value) == expected
    assert [str(replace(p, path=display_path(p.path))) for p in cd.check_data(small_root)] == [expected]


def test_nan_volume_is_refused_naming_the_file(small_root: Path) -> None:
    paths = CTRATEPaths(small_root, "train")
    name = sorted(pd.read_csv(paths.metadata_csv)["VolumeName"])[0]
    _nan_block(small_root, name)
    with pytest.raises(BadSampleError) as err:
        load_ct_volume(paths.volume(name), read_metadata(small_root, "train")[name])
    # 40 × 40 voxels on each of the 32 slices
    assert str(err.value) == (
        f"{display_path(paths.volume(name))}: holds NaN or infinite values (51200 of 524288 voxels; "
        "outside the field of view?)"
    )


def test_candidate_views_are_checked_like_the_records_own_slice(small_root: Path) -> None:
    path = small_root / "vqa" / "train.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    record = records[0]
    view = {"slice_index": record["slice_index"], "roi": record["roi"], "z_mm": 0.0, "slab_mm": 0.0,
            "projection": "max", "shows_lesion": None}  # fmt: skip
    bad = [view, {**view, "slice_index": 40}, {**view, "roi": [[0, 0, 200, 10]]}]  # 32 slices of 128×128
    path.write_text("\n".join(json.dumps(r) for r in [{**record, "views": bad}, *records[1:]]) + "\n")
    roi = {(p.line, p.field): p.message for p in cd.check_data(small_root) if p.check == "roi"}
    assert set(roi) == {(1, "views[1].slice_index"), (1, "views[2].roi")}
    assert "32 slices" in roi[1, "views[1].slice_index"] and "128×128 slice" in roi[1, "views[2].roi"]
