"""One-shot inference on a user's own CT (``cli.py ask``): volume + question (+ ROI) → reasoning and answer.

The volume goes through the datamodule's own rendering and prompt code, so the model sees exactly what it was
trained on; the zoom-embedded image it saw is saved next to the answer for a clinician to check.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.panel import Panel

from common.files import atomic_write_bytes, atomic_write_text
from datamodules.anatomy import region_of
from datamodules.collate import VQACollator
from datamodules.ct_vqa import CTVQADataModule
from datamodules.ctrate import CTRATE_LABELS, BadSampleError
from datamodules.roi_sources import ROIQuery, check_proposal
from datamodules.slabs import axial_slab, slice_spacing
from datamodules.transforms import to_pil
from datamodules.user_volume import choose_view, load_user_mask, load_user_volume
from datamodules.views import ViewSpec, choose_views
from lightning_modules.policy import PolicyModule
from rewards.parsing import extract_answer, match_option

ASK_ID = "ask"


def ask(
    module: PolicyModule,
    datamodule: CTVQADataModule,
    volume: str,
    question: str,
    options: list[str] | None = None,
    roi: list[int] | None = None,
    roi_mask: str | None = None,
    slice_index: int | None = None,
    out_dir: str | Path = "runs/ask",
    abnormality: str | None = None,
) -> dict[str, Any]:
    """Answer ``question`` about ``volume`` (NIfTI file or DICOM folder); returns and saves the answer record.

    The view is the ROI mask's fullest slice, or ``slice_index`` (default: the middle slice) with the ``roi``
    box. With neither, and an ``abnormality`` named, the datamodule's ``roi_source`` proposes the slice and box
    (the question's location words pick the region for anatomy sources), and with the datamodule's ``views`` its
    K candidate views, as in training (``datamodules/views.py``); otherwise the lung fields are shown
    (``datamodules.user_volume.choose_view``). The saved image holds the views side by side.
    """
    ct = load_user_volume(volume)
    mask = load_user_mask(roi_mask, like=ct) if roi_mask else None
    roi_source = "user" if roi is not None or mask is not None else "lungs"
    proposal = None
    if abnormality is not None and abnormality not in CTRATE_LABELS:
        raise BadSampleError(f"abnormality {abnormality!r} is not a CT-RATE label: {', '.join(CTRATE_LABELS)}")
    source = getattr(datamodule, "roi_source", None)
    spec: ViewSpec | None = datamodule.hparams.get("views")
    kind = "presence" if options and {o.lower() for o in options} == {"yes", "no"} else "open"
    views, query = None, None
    if roi_source == "lungs" and slice_index is None and abnormality is not None and source is not None:
        query = ROIQuery(ct, Path(volume).name, {}, Path(volume).parent, abnormality, region_of(abnormality, question))
        proposal = source.propose(query)
    if proposal is not None:
        proposal = check_proposal(proposal, ct, str(volume))
        k, boxes, roi_source = proposal.slice_index, proposal.boxes, proposal.source
        if spec is not None and spec.active:  # the source's other views, chosen as the VQA builder chooses them
            projection = spec.projection_for(kind, abnormality)
            views = choose_views(source, query, (k, boxes), spec, projection, str(volume))
    else:
        k, boxes = choose_view(ct, roi=roi, mask=mask, slice_index=slice_index)
    dataset = datamodule.dataset_for([])
    shown = views or [{"slice_index": k, "roi": boxes, "slab_mm": 0.0, "projection": "max"}]
    spacing = slice_spacing(ct)
    images = [
        dataset.render(axial_slab(ct, v["slice_index"], v["slab_mm"], spacing, v["projection"]), v["roi"])
        for v in shown
    ]
    record = {
        "id": ASK_ID,
        "question_type": kind,
        "question": question,
        "answer": "",
        "options": list(options or []),
        "volume_name": str(volume),
        "reasoning": "",
        "_where": str(volume),
        **({"views": views} if views else {}),
    }
    batch = VQACollator(pad_token_id=datamodule.processor.tokenizer.pad_token_id)([dataset.encode(record, images)])
    batch = {k: v.to(module.device) if hasattr(v, "to") else v for k, v in batch.items()}
    completion = module.greedy_answers(batch)[0]
    raw = extract_answer(completion)
    result = {
        "volume": str(volume),
        "question": question,
        "options": record["options"],
        "slice_index": k,
        "roi": boxes,
        "roi_source": roi_source,
        **({"views": views} if views else {}),
        "completion": completion,
        "answer": (match_option(raw, record["options"]) or raw) if record["options"] else raw,
        "image": "image.png",
    }
    out = Path(out_dir)
    atomic_write_bytes(out / "image.png", _png_bytes(to_pil(torch.cat(images, dim=-1))))
    atomic_write_text(out / "answer.json", json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    _print(result, out)
    return result


def _png_bytes(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _print(result: dict[str, Any], out: Path) -> None:
    console = Console()
    where = f"slice {result['slice_index']}, ROI {result['roi']}"
    console.print(Panel(result["completion"] or "(empty)", title=f"{result['question']}  [{where}]"))
    console.print(f"answer: [bold]{result['answer']}[/bold]")
    console.print(f"saved the image the model saw to {out / 'image.png'} and the answer to {out / 'answer.json'}")
