"""Evaluations run as ``cli.py test`` into run folders, once: what the comparison table (``experiments/baselines.py``)
and the visual-reliance audit (``evaluation/audit.py``) evaluate with.

Each run writes a marker file into its folder after it succeeded, holding what made it (the command, settings);
a later call with the same record finds the folder complete and skips it, so an interrupted table or audit resumes,
and a run whose settings changed is evaluated again.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from common.files import atomic_write_text

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
Runner = Callable[[list[str], Path], int]  # (cli.py arguments, log file) -> exit status


def run_cli(args: list[str], log_path: Path) -> int:
    """``cli.py ARGS`` in a process of its own, its output in ``log_path``: one model's code or memory cannot reach
    the next run. Returns its exit status."""
    with log_path.open("w", encoding="utf-8") as f:
        return subprocess.run(
            [sys.executable, str(ROOT / "cli.py"), *args], stdout=f, stderr=subprocess.STDOUT
        ).returncode


def error_line(log_text: str) -> str:
    """The line of a failed run's output that says why: cli.py's ``error: …``, else an exception's last line."""
    lines = [line.strip() for line in log_text.splitlines() if line.strip()]
    for pattern in (r"^error: ", r"^[\w.]*(Error|Exception|Interrupt)\b"):
        found = [line for line in lines if re.match(pattern, line)]
        if found:
            return found[-1]
    return lines[-1] if lines else "no output"


def done_before(name: str, run_dir: Path, marker: str, record: dict[str, Any], files: Sequence[str]) -> bool:
    """True when ``run_dir`` holds ``files`` and its ``marker`` holds ``record``: made by the same command. Else
    the marker is removed, so an interrupted re-run leaves no folder that looks finished."""
    done = run_dir / marker
    if done.is_file() and all((run_dir / f).is_file() for f in files):
        if json.loads(done.read_text(encoding="utf-8")) == record:
            log.info("%s: evaluated before, skipped", name)
            return True
        log.info("%s: its settings changed since its run folder was written: evaluating again", name)
    done.unlink(missing_ok=True)
    return False


def run_once(
    args: list[str],
    run_dir: Path,
    log_path: Path,
    marker: str,
    record: dict[str, Any],
    files: Sequence[str],
    runner: Runner = run_cli,
) -> str | None:
    """Run ``cli.py ARGS`` (``runner``), which writes ``run_dir``; then mark the folder done with ``record``.
    None, or why it failed: its exit status and the log's error line, or the files it did not write."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if (status := runner(args, log_path)) != 0:
        text = log_path.read_text(encoding="utf-8") if log_path.is_file() else ""
        return f"exit status {status}: {error_line(text)} (log: {log_path})"
    if missing := [f for f in files if not (run_dir / f).is_file()]:
        return f"finished without a complete run folder ({', '.join(missing)} missing in {run_dir})"
    atomic_write_text(run_dir / marker, json.dumps(record, indent=2) + "\n")
    return None
