"""The synthetic CT-RATE a run generates where its data folder is missing (the embedded default's data)."""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from common.checkpoint_types import allow_in_checkpoints
from datamodules.ctrate import BadSampleError, CTRATEPaths
from datamodules.seeding import resolve_seed

log = logging.getLogger(__name__)


@dataclass
class SyntheticData:
    """Generate a synthetic CT-RATE (and its VQA files) at `data_dir` when the directory is missing."""

    n: int = 240
    seed: int | None = None  # None: the run's seed_everything
    scanner: Literal["A", "B"] = "A"  # B: the shifted scanner (datamodules/synthetic_ctrate.py SCANNERS)


def generate_if_missing(root: Path, synthetic: SyntheticData | None) -> None:
    """Write a synthetic CT-RATE at ``root`` when ``synthetic`` is set and ``root`` holds no ``dataset/`` yet.

    Raises ``BadSampleError`` when ``root`` already holds a synthetic set of another scanner, naming the metadata
    CSV line: a scanner-B run pointed at a scanner-A folder would otherwise test on the wrong scanner unawares.
    """
    if synthetic is None:
        return
    from datamodules.synthetic_ctrate import SCANNERS, generate

    if (root / "dataset").is_dir():
        path = CTRATEPaths(root, "train").metadata_csv
        if path.is_file():
            makers = {s.manufacturer: name for name, s in SCANNERS.items()}
            with path.open(encoding="utf-8") as f:
                row = next(csv.DictReader(f), {})
            found = makers.get(row.get("Manufacturer", ""))
            if found is not None and found != synthetic.scanner:
                raise BadSampleError(
                    f"{path.name}:2: field 'Manufacturer': {row['Manufacturer']!r} is scanner {found}'s, but "
                    f"synthetic.scanner is {synthetic.scanner!r}; point data_dir at a folder per scanner"
                )
        return
    log.info("generating synthetic CT-RATE (scanner %s) at %s", synthetic.scanner, root)
    generate(root, n=synthetic.n, seed=resolve_seed(synthetic.seed), scanner=synthetic.scanner)


# Saved in the data modules' hyperparameters; checkpoints before the renovation name it datamodules.ct_vqa.
allow_in_checkpoints(SyntheticData, old_module="datamodules.ct_vqa")
