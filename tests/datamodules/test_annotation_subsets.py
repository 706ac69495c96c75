"""Annotated vs answer-only training subsets (CTVQADataModule ``annotation``, issue 17): disjoint by patient, together
the training split, validation and test untouched, answer-only SFT targets."""

from __future__ import annotations

from pathlib import Path

import pytest

from datamodules.collate import IGNORE_INDEX
from datamodules.ct_vqa import CTVQADataModule
from datamodules.ctrate import BadSampleError
from datamodules.splits import AnnotationSubset

FRACTION = 0.3


def make(root: Path, model_dir: Path, **kwargs) -> CTVQADataModule:
    kwargs = {"num_workers": 0, "seed": 0, **kwargs}
    dm = CTVQADataModule(data_dir=str(root), processor_path=str(model_dir), **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def arms(synthetic_root, tiny_model_dir) -> dict[str, CTVQADataModule]:
    """The whole training split and its two parts, from one seed."""
    return {
        "all": make(synthetic_root, tiny_model_dir),
        **{
            part: make(synthetic_root, tiny_model_dir, annotation=AnnotationSubset(part=part, fraction=FRACTION))
            for part in ("annotated", "answers_only")
        },
    }


def ids(dm: CTVQADataModule, split: str) -> list[str]:
    return [r["id"] for r in dm.datasets[split].records]


def patients(dm: CTVQADataModule) -> set[str]:
    return {r["patient_id"] for r in dm.datasets["train"].records}


def test_parts_are_disjoint_by_patient_and_together_the_training_split(arms):
    annotated, answers_only, everyone = (
        patients(arms["annotated"]),
        patients(arms["answers_only"]),
        patients(arms["all"]),
    )
    assert annotated and answers_only and not annotated & answers_only
    assert annotated | answers_only == everyone
    assert len(annotated) == round(FRACTION * len(everyone))
    # Every question of the training split is in exactly one part, in the file's order.
    merged = sorted(ids(arms["annotated"], "train") + ids(arms["answers_only"], "train"))
    assert merged == sorted(ids(arms["all"], "train"))


def test_validation_and_test_are_the_same_questions_in_every_arm(arms):
    for split in ("val", "test"):
        assert ids(arms["annotated"], split) == ids(arms["answers_only"], split) == ids(arms["all"], split)
    val = {r["patient_id"] for r in arms["all"].datasets["val"].records}
    assert val and not val & (patients(arms["annotated"]) | patients(arms["answers_only"]))
    # The answer-only arm validates against the traces too (BLEU / ROUGE-L of reasoning on val and test).
    assert all(r["reasoning"] for r in arms["answers_only"].datasets["val"].records)


def test_answers_only_drops_reasoning_and_annotated_keeps_it(arms):
    traces = {r["id"]: r["reasoning"] for r in arms["all"].datasets["train"].records}
    assert all(traces.values())
    assert all(r["reasoning"] == traces[r["id"]] for r in arms["annotated"].datasets["train"].records)
    assert all(r["reasoning"] == "" for r in arms["answers_only"].datasets["train"].records)
    # Copies: the records other arms (and the file) hold keep their traces.
    assert all(r["reasoning"] for r in arms["all"].datasets["train"].records)


def test_sft_targets_answer_only_and_with_trace(arms):
    tok = arms["all"].processor.tokenizer
    for part, starts in (("answers_only", "<answer>"), ("annotated", "<think>")):
        batch = next(iter(arms[part].train_dataloader()))
        for row, meta in zip(batch["labels"], batch["meta"], strict=True):
            text = tok.decode(row[row != IGNORE_INDEX])
            assert text.startswith(starts) and text.endswith(f"<answer>{meta['answer']}</answer><|im_end|>")
            assert ("<think>" in text) == (part == "annotated")


def test_division_is_deterministic_and_follows_the_seed(synthetic_root, tiny_model_dir, arms):
    spec = AnnotationSubset(part="annotated", fraction=FRACTION)
    again = make(synthetic_root, tiny_model_dir, annotation=spec)
    assert ids(again, "train") == ids(arms["annotated"], "train")
    # A seeded shuffle of the sorted training patients, not a prefix of them: some seed picks others than the first.
    prefixes = []
    for seed in (0, 1, 2, 3):
        everyone = sorted(patients(make(synthetic_root, tiny_model_dir, seed=seed)))
        annotated = patients(make(synthetic_root, tiny_model_dir, annotation=spec, seed=seed))
        assert annotated < set(everyone)
        prefixes.append(annotated == set(everyone[: len(annotated)]))
    assert not all(prefixes)


def test_yaml_dict_becomes_the_dataclass(synthetic_root, tiny_model_dir):
    dm = CTVQADataModule(
        data_dir=str(synthetic_root), processor_path=str(tiny_model_dir), annotation={"part": "answers_only"}
    )
    assert dm.hparams.annotation == AnnotationSubset(part="answers_only", fraction=0.2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"part": "annotated", "fraction": 0.0}, "annotation.fraction 0.0 is not strictly between 0 and 1"),
        ({"part": "annotated", "fraction": 1.0}, "annotation.fraction 1.0 is not strictly between 0 and 1"),
        ({"part": "both"}, "annotation.part 'both' is not 'annotated' or 'answers_only'"),
    ],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AnnotationSubset(**kwargs)


def test_an_empty_part_is_refused_naming_the_file(synthetic_root, tiny_model_dir):
    with pytest.raises(BadSampleError, match=r"train\.jsonl: annotation\.fraction=0\.99 leaves no answers_only"):
        make(synthetic_root, tiny_model_dir, annotation=AnnotationSubset(part="answers_only", fraction=0.99))
