"""Record conditions of the visual-reliance audit: which slice and box a question's image is drawn from.

``shuffled``: another question's (same question type); ``wrong_region``: the question's box moved to a lesion-free
place of the same size on the same slice; ``box_source``: the box another ROI source proposes. The question, options
and answer never change. ``datamodules/image_conditions.py`` holds the condition and the geometry.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.ctrate import BadSampleError, CTRATEPaths, load_lesion_mask, parse_volume_name, read_split
from datamodules.image_conditions import LESION_BOX_TYPES, ImageCondition, shuffle_partners, wrong_region_boxes
from datamodules.roi_sources import ROIQuery, ROISource, check_proposal


class RecordViews:
    """The record a question's image is drawn from under a record condition, and what was done (``status``).

    ``volumes`` is the dataset's ``VolumeCache``, ``metadata`` its metadata rows by VolumeName, ``root`` the data
    root (lesion masks: ``rexgroundingct/segmentations``; reports for ``box_source``'s region words).
    """

    def __init__(
        self,
        condition: ImageCondition,
        records: Sequence[Mapping[str, Any]],
        volumes: Any,
        metadata: Mapping[str, Mapping[str, Any]],
        root: Path,
    ) -> None:
        self.condition, self.records, self.volumes, self.metadata = condition, records, volumes, metadata
        self.root = Path(root)
        self.partner = shuffle_partners(records, condition.seed) if condition.name == "shuffled" else []
        self._index = {r["id"]: i for i, r in enumerate(records)}
        self._source: ROISource | None = None
        self._rows: dict[str, dict[str, Any]] = {}

    def view(self, record: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
        """(the record to render, status): status ``moved``/``shuffled``/``proposed`` when the image changed, else
        why it did not (``no lesion-free place``, ``lesion box kept``, ``no proposal``)."""
        name = self.condition.name
        if name == "shuffled":
            other = self.records[self.partner[self._index[record["id"]]]]
            keys = ("volume_name", "slice_index", "roi")
            shown = {**record, **{k: other[k] for k in keys}, "views": other.get("views"), "shown_id": other["id"]}
            return shown, "shuffled"
        if record.get("views"):  # the box conditions move one slice's box; candidate views have several
            raise BadSampleError(f"{record.get('_where', record['id'])}: image condition {name} needs single-slice "
                                 "records; this one has candidate views (datamodules/views.py)")  # fmt: skip
        if name == "wrong_region":
            return self._wrong_region(record)
        if name == "box_source":
            return self._box_source(record)
        return dict(record), "original"

    def _lesions(self, record: Mapping[str, Any], height: int, width: int) -> np.ndarray:
        path = CTRATEPaths(self.root).lesion_mask(record["volume_name"])
        if not path.is_file():
            return np.zeros((height, width), bool)
        masks = load_lesion_mask(path, self.metadata.get(record["volume_name"]))
        return masks.any(axis=0)[:, :, record["slice_index"]].T

    def _wrong_region(self, record: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
        volume = self.volumes.get(record["volume_name"], self.metadata.get(record["volume_name"]))
        slice_hu = volume.detach().cpu().numpy()[0, :, :, record["slice_index"]].T
        lesion = self._lesions(record, *slice_hu.shape)
        rng = np.random.default_rng([self.condition.seed, zlib.crc32(str(record["id"]).encode())])
        moved = wrong_region_boxes(record["roi"], lesion, slice_hu > -500, rng)  # body: not air
        if moved is None:
            return dict(record), "no lesion-free place of this size"
        return {**record, "roi": moved}, "moved"

    def _box_source(self, record: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
        if record["question_type"] in LESION_BOX_TYPES or not record.get("abnormality"):
            return dict(record), "lesion box kept"
        from datamodules.vqa_builder.report_text import report_region

        if self._source is None:
            from jsonargparse import ArgumentParser

            parser = ArgumentParser(exit_on_error=False)
            parser.add_argument("--source", type=ROISource)
            parsed = parser.parse_object({"source": self.condition.roi_source})
            self._source = parser.instantiate_classes(parsed).source
        name, label = record["volume_name"], record["abnormality"]
        split = parse_volume_name(name)[0]
        if split not in self._rows:
            self._rows[split] = {r["VolumeName"]: r for r in read_split(self.root, split).to_dict("records")}
        row = self._rows[split].get(name, self.metadata.get(name, {}))
        volume = self.volumes.get(name, self.metadata.get(name))
        query = ROIQuery(volume, name, row, self.root, label, report_region(label, row))
        proposal = self._source.propose(query)
        if proposal is None:
            return dict(record), "no proposal"
        check_proposal(proposal, volume, f"{record.get('_where', name)} {label}")
        return {**record, "slice_index": proposal.slice_index, "roi": proposal.boxes}, "proposed"
