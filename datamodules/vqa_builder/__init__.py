"""Build CT-RATE-VQA JSONL (one file per split) from CT-RATE + ReXGroundingCT, real or synthetic alike.

Ground truth comes only from what ``datamodules/ctrate/`` reads: labels CSV (presence), finding texts
and lesion masks (slice, ROI, side, size, count). Volumes without masks get anatomy ROIs and only
presence/abnormality questions.

ROIs must not leak presence answers (the zoom embedding outlines them on the image). Every presence
question shows exactly one box: a positive shows the largest component of its lesion on the lesion's
best slice; a negative in a volume with masks shows a *decoy* box (with the probability that positives of
that label in masked volumes of the split have masks) whose size and relative slice are drawn from
those positives (a fixed plausible range if there are none), placed where the label occurs: lung fields
by HU for lung findings, mediastinal soft tissue (aorta, heart border) for calcifications, the heart region
for cardiomegaly / pericardial effusion. Other negatives, like maskless positives, get one anatomy box.
Presence is balanced yes/no per label *and* per ROI kind (mask-like vs anatomy). ``roi_source`` is
metadata only, never shown to the model: decoys are recorded as "anatomy". Count questions show one box
per nodule on the slice on purpose (the answer is the number of lesions the model must see).

Where a question's box comes from is pluggable (``--roi_source``, datamodules/roi_sources.py). The default,
``MaskROI``, is the above. A source that ignores lesion masks (``AnatomyROI``, ``CAMROI``, ``MaskROI`` with
``lesions: false``) boxes presence and abnormality questions of every volume, positives and negatives alike, and
presence is balanced per label within that source; a negative asks the source about a region drawn from where the
split's reports place that label, so the region named does not give the answer away. The box such a source draws
may still differ between yes and no (an enlarged heart has a larger heart box): it is made from the image alone,
so it is evidence the deployed pipeline has too, not the label leaking. Location, size and count questions keep
their lesion boxes: their answers come from those masks.

With ``--views`` (``datamodules/views.py``) presence and abnormality questions show K candidate views instead of one
slice: the view chosen as above, then the source's ``propose_many`` (CAM's next-best slices, slab centres spread
over the named region), at least ``min_distance_mm`` apart, in z order, optionally as thin slab projections.
Negatives get them exactly as positives. K = 1 without slabs writes the same files as without ``--views``.

Modules, one job each: ``report_text`` (report words → labels, regions), ``geometry`` (slices, sides, anatomy
boxes), ``decoys`` (decoy boxes of negatives), ``templates`` (the questions' words), ``record`` (keys and the
builder-side check), ``questions`` and ``lesion_questions`` (one volume's questions), ``balance`` (presence
yes/no), ``state`` (``build.json``), ``build`` (splits → files) and ``__main__`` (the command line):

    python -m datamodules.vqa_builder --root data/synthetic-ctrate --seed 0
    python -m datamodules.vqa_builder --root data/synthetic-ctrate --out data/synthetic-ctrate/vqa-anatomy \
        --roi_source datamodules.roi_sources.AnatomyROI
"""

from datamodules.vqa_builder.build import build_split, build_vqa
from datamodules.vqa_builder.record import VQA_KEYS, check_record
from datamodules.vqa_builder.report_text import findings_by_label, label_of, report_region
from datamodules.vqa_builder.state import BUILD_INFO, build_info, vqa_state

__all__ = [
    "BUILD_INFO",
    "VQA_KEYS",
    "build_info",
    "build_split",
    "build_vqa",
    "check_record",
    "findings_by_label",
    "label_of",
    "report_region",
    "vqa_state",
]
