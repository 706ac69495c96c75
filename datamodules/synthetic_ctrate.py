"""Deterministic synthetic CT-RATE (+ ReXGroundingCT masks, TotalSegmentator-style organ masks) for CPU runs.

Writes exactly the layout ``datamodules/ctrate/`` reads for real data; volumes are stored the way raw
CT-RATE downloads are (int16 stored values, intercept -1024, identity header affine, true geometry only
in the metadata CSV), so the real loader is what turns them into HU/LPS.

Two scanners image the phantoms (``SCANNERS``): A, the default, and B, a distribution shift for testing (thinner
slices, more noise, a sharp reconstruction kernel, a HU calibration offset, its own manufacturer in the metadata).
With one seed both image the same patients (anatomy, findings, reports, labels): only acquisition differs.

    python -m datamodules.synthetic_ctrate --out data/synthetic-ctrate --n 200 --seed 0
    python -m datamodules.synthetic_ctrate --out data/synthetic-ctrate-B --n 200 --seed 0 --scanner B
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from datamodules.ctrate import CTRATE_LABELS, REPORT_COLUMNS, CTRATEPaths

SHAPE = (128, 128, 32)  # (X, Y, Z) in LPS index order: i -> Left, j -> Posterior, k -> Superior
XY_SPACING, Z_SPACING = 2.5, 5.0  # mm; Z_SPACING is the phantom's slab thickness (and scanner A's slices)
INTERCEPT = -1024
PREVALENCE = 0.42
METADATA_COLUMNS = (
    "VolumeName",
    "Manufacturer",
    "ManufacturerModelName",
    "PatientSex",
    "PatientAge",
    "PatientPosition",
    "SliceThickness",
    "Rows",
    "Columns",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "XYSpacing",
    "ZSpacing",
    "RescaleIntercept",
    "RescaleSlope",
)


@dataclass(frozen=True)
class Scanner:
    """How one synthetic scanner images a phantom (HU in, HU out), and what its metadata says about it."""

    manufacturer: str
    model: str
    slice_thickness: float
    """mm, contiguous (= ZSpacing); divides the phantom's Z_SPACING slabs, so thin slices stay exact."""
    noise_std: float
    """HU, white noise per voxel before the reconstruction kernel."""
    kernel_sharpening: float
    """In-plane reconstruction kernel, as an unsharp mask ``hu + s·(hu − G(hu))`` with a 1-voxel Gaussian G (0: A's
    plain one): a sharp, lung-style kernel whose edges overshoot and whose noise grows and anticorrelates."""
    hu_offset: float
    """HU, calibration offset added to every voxel (air and water read this much higher)."""

    @property
    def slices_per_slab(self) -> int:
        return round(Z_SPACING / self.slice_thickness)


SCANNERS: dict[str, Scanner] = {
    "A": Scanner("SYNTHETIC", "Phantom-128", Z_SPACING, noise_std=12.0, kernel_sharpening=0.0, hu_offset=0.0),
    # A sharp kernel rather than a soft one: it sharpens 1-voxel findings (calcified specks, 2.5 mm nodules) where a
    # soft one would blur them into the lung beside them, so every finding stays visible. The noise ends at ~24 HU.
    "B": Scanner("SYNTHETIC-B", "Phantom-B64", Z_SPACING / 2, noise_std=14.0, kernel_sharpening=0.8, hu_offset=25.0),
}


@dataclass
class Lesion:
    label: str
    text: str
    mask: np.ndarray  # bool (X, Y, Z), LPS


@dataclass
class Phantom:
    hu: np.ndarray  # float32 (X, Y, Z), LPS
    lungs: np.ndarray  # bool (X, Y, Z): aerated-lung anatomy before findings
    lesions: list[Lesion] = field(default_factory=list)
    regions: dict[str, np.ndarray] = field(default_factory=dict)  # TotalSegmentator structure name -> bool mask

    @property
    def labels(self) -> dict[str, int]:
        present = {les.label for les in self.lesions}
        return {name: int(name in present) for name in CTRATE_LABELS}


def _ellipse(i, j, ci, cj, a, b):
    return ((i - ci) / a) ** 2 + ((j - cj) / b) ** 2 <= 1.0


LOBES_OF = {"right": ("upper", "middle", "lower"), "left": ("upper", "lower")}


def _lobe(side: str, j: float, k: float, lung_cj: float) -> str:
    """Lobe from height and, for the right middle lobe, anterior position (smaller j = anterior)."""
    if side == "left":
        return "upper" if k >= 16 else "lower"
    if k >= 18:
        return "upper"
    return "middle" if k >= 8 and j < lung_cj else "lower"


def _disk(d: int) -> np.ndarray:
    """Digital disk whose bounding box is exactly d x d voxels."""
    c, r2 = (d - 1) / 2, (d / 2) ** 2
    o = np.arange(d)
    return ((o[:, None] - c) ** 2 + (o[None, :] - c) ** 2) <= r2


def _regions(
    side_of: dict[str, np.ndarray],
    heart: np.ndarray,
    aorta: np.ndarray,
    j: np.ndarray,
    k: np.ndarray,
    centres: dict[str, tuple[float, float]],
) -> dict[str, np.ndarray]:
    """Organ/lobe masks as TotalSegmentator names them; lobes by ``_lobe``, the rule the reports are written by."""
    lobe_of = np.vectorize(_lobe, otypes=[str])
    out = {"heart": heart.copy(), "aorta": aorta.copy()}
    for side, mask in side_of.items():
        lobes = lobe_of(side, j[mask], k[mask], centres[side][1])
        for lobe in LOBES_OF[side]:
            region = np.zeros(mask.shape, bool)
            region[mask] = lobes == lobe
            out[f"lung_{lobe}_lobe_{side}"] = region
    return out


def make_phantom(rng: np.random.Generator, findings: bool = True, scanner: str = "A") -> Phantom:
    """Chest phantom in HU (LPS) with randomly present findings and their lesion masks, as ``scanner`` images it.

    Arrays are (X, Y, Z) with Z = 32 slices of 5 mm on scanner A (``SHAPE``), 64 of 2.5 mm on B. The anatomy and
    findings are drawn before acquisition, so one ``rng`` state gives the same patient on every scanner.
    Raises ``ValueError`` for an unknown scanner.
    """
    if scanner not in SCANNERS:
        raise ValueError(f"scanner {scanner!r} is not one of {', '.join(SCANNERS)}")
    nx, ny, nz = SHAPE
    i, j, k = np.meshgrid(np.arange(nx), np.arange(ny), np.arange(nz), indexing="ij")
    s = rng.uniform(0.95, 1.05)
    body = _ellipse(i, j, 64, 66, 56 * s, 42 * s)
    hu = np.full(SHAPE, -1000.0, np.float32)
    hu[body] = -100.0  # subcutaneous fat rim
    hu[_ellipse(i, j, 64, 66, 51 * s, 37 * s)] = 40.0
    # Lungs taper towards the apex (high k) and the bases (low k).
    taper = np.clip(np.minimum((k + 4) / 7, (34 - k) / 10), 0.35, 1.0)
    centres = {"right": (40 + rng.uniform(-2, 2), 62.0), "left": (88 + rng.uniform(-2, 2), 62.0)}
    side_of = {}
    for side, (ci, cj) in centres.items():
        side_of[side] = _ellipse(i, j, ci, cj, 18 * s * taper, 28 * s * taper) & (k >= 1) & (k <= 30)
    lungs = side_of["right"] | side_of["left"]
    hu[lungs] = -850.0
    big_heart = findings and rng.random() < PREVALENCE
    heart = _ellipse(i, j, 72, 46, 24, 17) if big_heart else _ellipse(i, j, 70, 46, 15, 12)
    heart &= (k >= 3) & (k <= 14)
    aorta = _ellipse(i, j, 74, 80, 4, 4)
    spine = _ellipse(i, j, 64, 97, 8, 7) | ((abs(i - 64) <= 2) & (j >= 103) & (j <= 110))
    hu[heart] = 40.0
    hu[aorta] = 45.0
    hu[spine] = 700.0
    lungs &= ~(heart | aorta | spine)
    for side in side_of:
        side_of[side] &= lungs
    ph = Phantom(hu=hu, lungs=lungs.copy(), regions=_regions(side_of, heart, aorta, j, k, centres))
    if big_heart:
        ph.lesions.append(Lesion("Cardiomegaly", "Cardiomegaly: the cardiac silhouette is enlarged.", heart))
    if not findings:
        return _finish(ph, rng, SCANNERS[scanner])
    free = lungs.copy()  # aerated lung not yet used by a lesion

    if rng.random() < PREVALENCE * 0.6:
        patches = np.zeros(SHAPE, bool)
        for _ in range(rng.integers(3, 7)):
            cand = np.argwhere(free & (k >= 18))
            ci, cj, ck = cand[rng.integers(len(cand))]
            r = rng.integers(2, 5)
            patches |= _ellipse(i, j, ci, cj, r, r) & (abs(k - ck) <= 1) & free
        hu[patches] = -980.0
        free &= ~patches
        ph.lesions.append(Lesion("Emphysema", "Centrilobular emphysema in the upper lobes of both lungs.", patches))

    if rng.random() < PREVALENCE:
        side = str(rng.choice(["right", "left"]))
        cand = np.argwhere(free & side_of[side] & (k >= 4) & (k <= 26))
        ci, cj, ck = cand[rng.integers(len(cand))]
        r = rng.integers(6, 10)
        blob = _ellipse(i, j, ci, cj, r, r * 0.8) & (abs(k - ck) <= rng.integers(2, 4)) & free & side_of[side]
        hu[blob] = 30.0
        free &= ~blob
        lobe = _lobe(side, cj, ck, centres[side][1])
        ph.lesions.append(Lesion("Consolidation", f"Consolidation in the {lobe} lobe of the {side} lung.", blob))

    if rng.random() < PREVALENCE:
        sides = [["right"], ["left"], ["right", "left"]][rng.integers(3)]
        k_top = rng.integers(12, 21)
        for side in sides:
            cj = centres[side][1]
            fluid = side_of[side] & (j >= cj + rng.uniform(2, 10)) & (k <= k_top) & free
            hu[fluid] = 10.0
            free &= ~fluid
            text = f"{side.capitalize()} pleural effusion layering in the dependent posterior pleural space."
            ph.lesions.append(Lesion("Pleural effusion", text, fluid))

    if rng.random() < PREVALENCE:
        count = int(rng.choice([1, 2, 3], p=[0.3, 0.35, 0.35]))
        clustered = rng.random() < 0.8  # same slice, so per-slice counts of 2 and 3 occur
        k0 = int(rng.integers(4, 26))
        for _ in range(count):
            d = int(rng.choice([1, 2, 3, 4, 5], p=[0.3, 0.15, 0.15, 0.1, 0.3]))
            depth = 1 if d <= 2 else 2
            disk = _disk(d)
            ok = free & np.roll(free, -(depth - 1), axis=2)
            if clustered:
                ok &= k == k0
            cand = np.argwhere(ok[: nx - d, : ny - d, : nz - depth])
            rng.shuffle(cand)
            for ci, cj, ck in cand[:200]:
                m = np.zeros(SHAPE, bool)
                m[ci : ci + d, cj : cj + d, ck : ck + depth] = disk[:, :, None]
                ring = np.zeros(SHAPE, bool)
                ring[max(ci - 1, 0) : ci + d + 1, max(cj - 1, 0) : cj + d + 1, max(ck - 1, 0) : ck + depth + 1] = True
                if (ring & ~free).any():  # keep a 1-voxel gap so nodules stay separate components
                    continue
                side = "right" if ci + d / 2 < 64 else "left"
                lobe = _lobe(side, cj + d / 2, ck, centres[side][1])
                hu[m] = 40.0
                free &= ~ring
                text = f"A {d * XY_SPACING:g} mm nodule in the {lobe} lobe of the {side} lung."
                ph.lesions.append(Lesion("Lung nodule", text, m))
                break

    if rng.random() < PREVALENCE:
        specks = np.zeros(SHAPE, bool)
        for _ in range(rng.integers(2, 5)):
            t, kk = rng.uniform(0, 2 * np.pi), rng.integers(0, nz)
            specks[int(round(74 + 4 * np.cos(t))), int(round(80 + 4 * np.sin(t))), kk] = True
        hu[specks] = 400.0
        text = "Calcified atherosclerotic plaques in the wall of the descending aorta."
        ph.lesions.append(Lesion("Arterial wall calcification", text, specks))

    if rng.random() < PREVALENCE:
        specks = np.zeros(SHAPE, bool)
        ci, cj, a, b = (72, 46, 24, 17) if big_heart else (70, 46, 15, 12)
        for _ in range(rng.integers(1, 4)):
            t, kk = rng.uniform(-np.pi, -0.2), rng.integers(5, 13)  # anterior-left heart border
            specks[int(round(ci + (a - 1) * np.cos(t))), int(round(cj + (b - 1) * np.sin(t))), kk] = True
        hu[specks] = 450.0
        text = "Coronary artery wall calcifications along the anterior heart border."
        ph.lesions.append(Lesion("Coronary artery wall calcification", text, specks))
    return _finish(ph, rng, SCANNERS[scanner])


def _finish(ph: Phantom, rng: np.random.Generator, scanner: Scanner) -> Phantom:
    """Acquire the phantom: slices, noise, reconstruction kernel, calibration offset (A: noise only, as before)."""
    ph.lesions = [les for les in ph.lesions if les.mask.any()]
    n = scanner.slices_per_slab
    if n != 1:  # each 5 mm slab is uniform along Z, so its thin slices are exact copies: masks stay true
        ph.hu, ph.lungs = np.repeat(ph.hu, n, axis=2), np.repeat(ph.lungs, n, axis=2)
        ph.lesions = [Lesion(les.label, les.text, np.repeat(les.mask, n, axis=2)) for les in ph.lesions]
        ph.regions = {name: np.repeat(mask, n, axis=2) for name, mask in ph.regions.items()}
    hu = ph.hu + rng.normal(0.0, scanner.noise_std, ph.hu.shape).astype(np.float32)
    if scanner.kernel_sharpening:
        # In-plane only: a reconstruction kernel filters each slice; Z resolution is the slice's own.
        hu += scanner.kernel_sharpening * (hu - ndimage.gaussian_filter(hu, sigma=(1.0, 1.0, 0), mode="nearest"))
    ph.hu = np.clip(hu + np.float32(scanner.hu_offset), -1024, 3071)
    return ph


def _report(ph: Phantom, scanner: Scanner) -> dict[str, str]:
    sentences = [les.text for les in ph.lesions] or ["Lungs are clear. Heart size is normal."]
    present = [name for name, v in ph.labels.items() if v]
    return {
        "ClinicalInformation_EN": "Not given.",
        "Technique_EN": f"Non-contrast chest CT, {scanner.slice_thickness:g} mm axial sections.",
        "Findings_EN": " ".join(sentences),
        "Impressions_EN": ("; ".join(present) + ".") if present else "No acute cardiopulmonary abnormality.",
    }


def _metadata(name: str, rng: np.random.Generator, scanner: Scanner) -> dict[str, object]:
    nx, ny, _ = SHAPE
    # Origin = centre of voxel (0, 0, 0) in DICOM LPS mm; the body sits around the isocentre. A thin first slice
    # lies in the lower part of the first slab, so its centre is below the slab's.
    z0 = -float(rng.integers(100, 200)) - (Z_SPACING - scanner.slice_thickness) / 2
    origin = [-(nx - 1) / 2 * XY_SPACING, -(ny - 1) / 2 * XY_SPACING, z0]
    return {
        "VolumeName": name,
        "Manufacturer": scanner.manufacturer,
        "ManufacturerModelName": scanner.model,
        "PatientSex": str(rng.choice(["M", "F"])),
        "PatientAge": f"{int(rng.integers(30, 85)):03d}Y",
        "PatientPosition": "HFS",
        "SliceThickness": scanner.slice_thickness,
        "Rows": ny,
        "Columns": nx,
        "ImagePositionPatient": str(origin),
        "ImageOrientationPatient": "[1, 0, 0, 0, 1, 0]",
        "XYSpacing": f"[{XY_SPACING}, {XY_SPACING}]",
        "ZSpacing": scanner.slice_thickness,
        "RescaleIntercept": INTERCEPT,
        "RescaleSlope": 1,
    }


def _volume_names(n: int, seed: int) -> list[str]:
    """~80/20 train/valid split by patient; patients have scans a (and sometimes b), reconstruction 1."""
    rng = np.random.default_rng([seed, 10**6])
    scans: list[int] = []
    while sum(scans) < n:
        scans.append(min(int(rng.choice([1, 2], p=[0.7, 0.3])), n - sum(scans)))
    order = rng.permutation(len(scans))
    n_valid = max(1, round(0.2 * len(scans))) if len(scans) > 1 else 0
    valid = set(order[:n_valid].tolist())
    names, counters = [], {"train": 0, "valid": 0}
    for p, count in enumerate(scans):
        split = "valid" if p in valid else "train"
        counters[split] += 1
        names += [f"{split}_{counters[split]}_{scan}_1.nii.gz" for scan in "ab"[:count]]
    return names


def generate(out: Path, n: int, seed: int = 0, scanner: str = "A") -> None:
    """Write ``n`` synthetic CT-RATE volumes with metadata, reports, labels and ReXGroundingCT masks, imaged by
    ``scanner`` (a key of ``SCANNERS``; ``ValueError`` for another)."""
    if scanner not in SCANNERS:
        raise ValueError(f"scanner {scanner!r} is not one of {', '.join(SCANNERS)}")
    out = Path(out)
    rows: dict[str, dict[str, list[dict]]] = {s: {"meta": [], "rep": [], "lab": []} for s in ("train", "valid")}
    grounding: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    for idx, name in enumerate(_volume_names(n, seed)):
        rng = np.random.default_rng([seed, idx])
        split = name.split("_")[0]
        paths = CTRATEPaths(out, split)
        ph = make_phantom(rng, scanner=scanner)
        raw = np.round(ph.hu - INTERCEPT).astype(np.int16)  # stored values, as raw downloads hold them
        vpath = paths.volume(name)
        vpath.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(raw, np.eye(4)), vpath)
        for structure, mask in ph.regions.items():  # what TotalSegmentator would write for this volume
            rpath = paths.region_mask(name, structure)
            rpath.parent.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(mask.astype(np.uint8), np.eye(4)), rpath)
        rows[split]["meta"].append(_metadata(name, rng, SCANNERS[scanner]))
        rows[split]["rep"].append({"VolumeName": name, **_report(ph, SCANNERS[scanner])})
        rows[split]["lab"].append({"VolumeName": name, **ph.labels})
        if ph.lesions:
            mpath = paths.lesion_mask(name)
            mpath.parent.mkdir(parents=True, exist_ok=True)
            stack = np.stack([les.mask for les in ph.lesions]).astype(np.uint8)  # (K, X, Y, Z), native grid
            nib.save(nib.Nifti1Image(stack, np.eye(4)), mpath)
            entry = {"name": name, "findings": {str(c): les.text for c, les in enumerate(ph.lesions)}}
            grounding["train" if split == "train" else "val"].append(entry)
    for split, tables in rows.items():
        paths = CTRATEPaths(out, split)
        for path, cols, key in (
            (paths.metadata_csv, METADATA_COLUMNS, "meta"),
            (paths.reports_csv, REPORT_COLUMNS, "rep"),
            (paths.labels_csv, ("VolumeName", *CTRATE_LABELS), "lab"),
        ):
            path.parent.mkdir(parents=True, exist_ok=True)
            pd.DataFrame(tables[key], columns=list(cols)).to_csv(path, index=False)
    gpath = CTRATEPaths(out).grounding_json
    gpath.parent.mkdir(parents=True, exist_ok=True)
    gpath.write_text(json.dumps(grounding, indent=1), encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/synthetic-ctrate"))
    parser.add_argument("--n", type=int, default=200, help="number of volumes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scanner", choices=sorted(SCANNERS), default="A", help="A: default; B: shifted scanner")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    generate(args.out, args.n, args.seed, args.scanner)
    labels = pd.concat(pd.read_csv(CTRATEPaths(args.out, s).labels_csv) for s in ("train", "valid"))
    print(f"wrote {len(labels)} volumes to {args.out} in {time.perf_counter() - start:.1f} s")
    for name in CTRATE_LABELS:
        if labels[name].sum():
            print(f"  {name:<36} {int(labels[name].sum()):4d} / {len(labels)}")


if __name__ == "__main__":
    main()
