"""The one box-inside-slice check (datamodules/boxes.py) and the errors its callers wrap it in."""

import pytest
import torch

from datamodules.boxes import box_problem
from datamodules.ctrate import BadSampleError
from datamodules.roi_sources import ROIProposal, check_proposal
from datamodules.vqa_builder import VQA_KEYS, check_record


@pytest.mark.parametrize(
    ("box", "problem"),
    [
        ([0, 0, 128, 96], None),  # the whole 96-row × 128-column slice
        ([10, 20, 11, 21], None),
        ([0, 0, 96, 128], "[0, 0, 96, 128] is outside the 128×96 slice"),  # x and y swapped
        ([0, 0, 129, 4], "[0, 0, 129, 4] is outside the 128×96 slice"),
        ([-1, 0, 4, 4], "[-1, 0, 4, 4] is outside the 128×96 slice"),
        ([5, 5, 5, 9], "[5, 5, 5, 9] is empty (need x0 < x1 and y0 < y1)"),
        ([5, 9, 6, 3], "[5, 9, 6, 3] is empty (need x0 < x1 and y0 < y1)"),
    ],
)
def test_box_problem(box, problem):
    assert box_problem(box, 96, 128) == problem


def test_roi_sources_wrap_the_problem():
    volume = torch.zeros(1, 128, 96, 8)  # (1, X, Y, Z): display slices are 96 rows × 128 columns
    with pytest.raises(BadSampleError) as err:
        check_proposal(ROIProposal(3, [[0, 0, 96, 128]], "cam", "cam"), volume, "v")
    assert str(err.value) == "v: cam ROI box [0, 0, 96, 128] is outside the 128×96 slice"


def test_builder_wraps_the_problem():
    rec = dict.fromkeys(VQA_KEYS) | {"answer": "yes", "options": ["yes", "no"], "roi": [[0, 0, 10, 10]]}
    check_record(rec, (128, 96), "train v")
    with pytest.raises(BadSampleError) as err:
        check_record(rec | {"roi": [[0, 0, 10, 10], [4, 4, 4, 8]]}, (128, 96), "train v")
    assert str(err.value) == "train v: field 'roi' [4, 4, 4, 8] is empty (need x0 < x1 and y0 < y1)"
    with pytest.raises(BadSampleError, match=r"field 'roi' \[0, 0, 10, 97\] is outside the 128×96 slice"):
        check_record(rec | {"roi": [[0, 0, 10, 97]]}, (128, 96), "train v")
