"""Running cli.py into run folders once (evaluation/cli_runs.py): the error line a failed run is reported by."""

from __future__ import annotations

from evaluation.cli_runs import error_line


def test_error_line_is_the_reason():
    assert error_line("Seed set to 0\nerror: model directory /m has no config.json\n") == (
        "error: model directory /m has no config.json"
    )
    traceback = 'Traceback (most recent call last):\n  File "x.py"\ntorch.OutOfMemoryError: CUDA out of memory\n'
    assert error_line(traceback) == "torch.OutOfMemoryError: CUDA out of memory"
