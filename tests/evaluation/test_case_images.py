"""The cases of an evaluation report (evaluation/case_images.py) and the run folder's report.md / report.html that
show them with their images (evaluation/run_folder.py, report_html.py), on hand-made rows and real PNG files."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from evaluation.case_images import case_path, pick_cases
from evaluation.run_folder import write_run

QTYPES = ("presence", "location", "size")


def rows(n_per_type: int = 10) -> list[dict]:
    """Rows of three question types: presence and location half right, size all right (no wrong case to show)."""
    out = []
    for qtype in QTYPES:
        for i in range(n_per_type):
            correct = qtype == "size" or i % 2 == 0
            truth, answer = "yes", "yes" if correct else "no"
            out.append(
                {
                    "id": f"vol_{i}-{qtype}-{i}",
                    "question_type": qtype,
                    "question": f"Question {i} about {qtype}?",
                    "options": ["yes", "no"],
                    "truth": truth,
                    "answer": answer,
                    "reasoning": f"<look> at region {i}",
                    "correct": correct,
                    "formatted": True,
                    "valid": True,
                    "volume_name": f"vol_{i}.nii.gz",
                }
            )
    return out


def render(row: dict) -> Image.Image:
    """A stand-in for the dataset's rendering: an RGB image whose pixels encode the row's id."""
    value = sum(row["id"].encode()) % 256
    return Image.fromarray(np.full((28, 28, 3), value, dtype=np.uint8))


def linked_images(run_dir: Path) -> dict[str, list[str]]:
    """Image paths each report links: Markdown ``![..](path)`` in report.md, ``<img src="path">`` in report.html."""
    md = (run_dir / "report.md").read_text(encoding="utf-8")
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    return {"md": re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md), "html": re.findall(r'<img src="([^"]+)"', page)}


def shown_verdicts(run_dir: Path) -> dict[str, set[str]]:
    """Question type → the verdicts ("wrong", "right") of the cases report.html shows for it."""
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    out: dict[str, set[str]] = {}
    for section in page.split("<h3>")[1:]:
        out[section.split(" ", 1)[0]] = set(re.findall(r'<div class="case (wrong|right)">', section))
    return out


def test_pick_cases_is_seeded_and_covers_right_and_wrong_per_type():
    predictions = rows()
    picked = pick_cases(predictions, per_type=2, seed=0)
    assert [p["id"] for p in picked] == [p["id"] for p in pick_cases(predictions, per_type=2, seed=0)]
    for qtype in QTYPES:
        mine = [p for p in picked if p["question_type"] == qtype]
        wrong = [p for p in mine if not p["correct"]]
        assert len(wrong) == (0 if qtype == "size" else 2) and len(mine) - len(wrong) == 2
        assert mine == wrong + [p for p in mine if p["correct"]]  # wrong first
    draws = {tuple(p["id"] for p in pick_cases(predictions, per_type=2, seed=s)) for s in range(5)}
    assert len(draws) > 1  # the seed draws, not a fixed head of the list


def test_case_path_is_one_safe_file_name():
    assert case_path("valid_10_a_1-presence-2") == "cases/valid_10_a_1-presence-2.png"
    assert case_path("../x/y z") == "cases/.._x_y_z.png"


def test_run_folder_links_an_existing_image_for_every_case(tmp_path):
    run = tmp_path / "run"
    (run / "cases").mkdir(parents=True)
    (run / "cases" / "stale.png").write_bytes(b"from an earlier run")
    predictions = rows()
    metrics = {"accuracy": sum(p["correct"] for p in predictions) / len(predictions), "accuracy/presence": 0.5}
    write_run(run, metrics, predictions, {"name": "cases", "split": "test"}, render=render, cases_per_type=2)

    links = linked_images(run)
    case_links = [link for link in links["md"] if link.startswith("cases/")]
    assert len(case_links) == 2 * 2 + 2 * 2 + 2  # presence, location: 2 + 2; size: 2 right
    assert sorted(case_links) == sorted(link for link in links["html"] if link.startswith("cases/"))
    for link in links["md"] + links["html"]:
        assert (run / link).is_file(), link
    assert sorted(p.name for p in (run / "cases").iterdir()) == sorted(Path(link).name for link in case_links)
    by_id = {p["id"]: p for p in predictions}
    for link in case_links:
        case_id = Path(link).stem
        assert np.array_equal(np.asarray(Image.open(run / link)), np.asarray(render(by_id[case_id])))
    assert shown_verdicts(run) == {"presence": {"wrong", "right"}, "location": {"wrong", "right"}, "size": {"right"}}
    page = (run / "report.html").read_text(encoding="utf-8")
    assert "&lt;look&gt; at region" in page and "<look>" not in page  # text is escaped
    assert not list(run.rglob(".*.tmp"))


def test_run_folder_without_a_renderer_says_so(tmp_path):
    write_run(tmp_path, {}, rows(2), {"name": "no-images"})
    assert not (tmp_path / "cases").exists()
    assert "Image: not available" in (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "(image not available)" in (tmp_path / "report.html").read_text(encoding="utf-8")
