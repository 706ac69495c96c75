"""`cli.py test` / `cli.py predict` with configs/eval.yaml: run folder, predictions, p(yes), checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from cli import main
from datamodules.ct_vqa import CTVQADataModule
from evaluation.answers import answer_prefix, yes_probabilities
from lightning_modules.evaluator import VQAEvaluator
from tests.evaluation.test_case_images import linked_images, shown_verdicts
from tests.lightning_modules.test_answer_only_grpo import one_step_trainer

ROOT = Path(__file__).resolve().parents[2]
EVAL = str(ROOT / "configs" / "eval.yaml")
SFT = str(ROOT / "configs" / "sft.yaml")


def overlay(tmp_path: Path, synthetic_root: Path, tiny_model_dir: Path, name: str | None = "tiny") -> str:
    config = {
        "model": {"init_args": {"model_path": str(tiny_model_dir), "max_new_tokens": 12}},
        "data": {"data_dir": str(synthetic_root), "synthetic": None, "num_workers": 0, "max_samples": 12},
        "trainer": {
            "enable_progress_bar": False,
            "default_root_dir": str(tmp_path),
            "callbacks": [
                {
                    "class_path": "evaluation.callbacks.EvaluationReport",
                    "init_args": {"out_dir": str(tmp_path / "eval"), "name": name},
                },
                {
                    "class_path": "evaluation.callbacks.PredictionWriter",
                    "init_args": {"path": str(tmp_path / "predict" / "predictions.jsonl")},
                },
            ],
        },
    }
    path = tmp_path / "overlay.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_p_yes_matches_a_plain_forward(synthetic_root, tiny_model_dir):
    """The teacher-forced p(yes) (explicit mrope positions, left-padded batch) equals a per-sample HF forward."""
    module = VQAEvaluator(model_path=str(tiny_model_dir))
    module.configure_model()
    module.eval()
    data = CTVQADataModule(data_dir=str(synthetic_root), processor_path=str(tiny_model_dir), max_samples=3)
    data.setup("test")
    batch = next(iter(data.test_dataloader()))
    completions = ["<think>a density</think><answer>yes</answer>", "<think>clear</think>", "no tags"]
    got = yes_probabilities(module.model, module.tokenizer, batch, completions, module.yes_no_ids)
    for i, completion in enumerate(completions):
        prompt = batch["prompt_input_ids"][i][batch["prompt_attention_mask"][i].bool()]
        prefix = module.tokenizer(answer_prefix(completion), add_special_tokens=False)["input_ids"]
        ids = torch.cat([prompt, torch.tensor(prefix)]).unsqueeze(0)
        mm = torch.cat(
            [
                batch["prompt_mm_token_type_ids"][i][batch["prompt_attention_mask"][i].bool()],
                torch.zeros(len(prefix), dtype=torch.long),
            ]
        ).unsqueeze(0)
        per_image = int(batch["image_grid_thw"][i].prod())
        pixels = batch["pixel_values"][i * per_image : (i + 1) * per_image]
        with torch.no_grad():
            logits = module.model(
                input_ids=ids,
                mm_token_type_ids=mm,
                pixel_values=pixels,
                image_grid_thw=batch["image_grid_thw"][i : i + 1],
            ).logits[0, -1]
        expected = torch.softmax(logits[list(module.yes_no_ids)], dim=-1)[0].item()
        assert got[i] == pytest.approx(expected, abs=1e-5)


def test_eval_writes_a_run_folder_and_predict_writes_jsonl(tmp_path, synthetic_root, tiny_model_dir):
    cfg = overlay(tmp_path, synthetic_root, tiny_model_dir)
    cli = main(["test", "--config", EVAL, "--config", cfg])
    run = tmp_path / "eval" / "tiny"
    for name in ("metrics.json", "predictions.jsonl", "report.md", "run.json", "config.yaml"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    rows = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and len({r["id"] for r in rows}) == 12
    assert metrics["accuracy"] == pytest.approx(sum(r["correct"] for r in rows) / 12)
    presence = [r for r in rows if r["question_type"] == "presence"]
    assert presence and all(0.0 <= r["p_yes"] <= 1.0 for r in presence)
    assert all(r["p_yes"] is None for r in rows if r["question_type"] != "presence")
    assert {"question", "reasoning", "answer", "truth", "correct"} <= set(rows[0])
    info = json.loads((run / "run.json").read_text())
    assert info["seed"] == 0 and info["split"] == "test" and info["num_samples"] == 12 and info["vqa_file_sha256"]
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["init_args"]["max_new_tokens"] == 12
    assert list((run / "plots").glob("*.png"))
    assert "tiny" in (run / "report.md").read_text()
    assert_cases_show_what_the_model_saw(run, rows, cli.datamodule.hparams)
    assert cli.trainer.callback_metrics["test/accuracy"] == pytest.approx(metrics["accuracy"])

    main(["predict", "--config", EVAL, "--config", cfg])
    predicted = (tmp_path / "predict" / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in predicted] == [r["id"] for r in rows]
    assert not list((tmp_path / "predict").glob(".*part"))


def assert_cases_show_what_the_model_saw(run: Path, rows: list[dict], data_settings: dict) -> None:
    """Every image report.md and report.html link exists; each question type shows a wrong and a right case where
    it has both; a case's PNG is, pixel for pixel, the image its processor inputs were made from (``keep_images``
    of the evaluation's own data settings)."""
    links = linked_images(run)
    assert links["md"] and links["html"]
    for link in links["md"] + links["html"]:
        assert (run / link).is_file(), link
    verdicts = {
        q: {"right" if r["correct"] else "wrong" for r in rows if r["question_type"] == q}
        for q in {r["question_type"] for r in rows}
    }
    assert shown_verdicts(run) == verdicts
    settings = {k: v for k, v in data_settings.items() if not k.startswith("_")}
    data = CTVQADataModule(**{**settings, "keep_images": True})
    data.setup("test")
    index = {r["id"]: i for i, r in enumerate(data.datasets["test"].records)}
    for link in (link for link in links["md"] if link.startswith("cases/")):
        seen = data.datasets["test"][index[Path(link).stem]]["meta"]["image"]
        assert np.array_equal(np.asarray(Image.open(run / link)), np.asarray(seen)), link


def test_eval_of_a_lightning_checkpoint_uses_its_weights(tmp_path, synthetic_root, tiny_model_dir):
    """--ckpt_path of an SFT run: LightningCLI rebuilds SFTModule from the checkpoint, the test runs its weights."""
    run = tmp_path / "sft"
    sft = {
        "model": {"init_args": {"model_path": str(tiny_model_dir), "build_embedded_if_missing": False}},
        "data": {"data_dir": str(synthetic_root), "synthetic": None, "num_workers": 0, "max_samples": 8},
        "trainer": {**one_step_trainer(run), "max_steps": 2},
    }
    (tmp_path / "sft.yaml").write_text(yaml.safe_dump(sft))
    trained = main(["fit", "--config", SFT, "--config", str(tmp_path / "sft.yaml")]).model
    cfg = overlay(tmp_path, synthetic_root, tiny_model_dir, name=None)
    cli = main(["test", "--config", EVAL, "--config", cfg, "--ckpt_path", str(run / "ckpt" / "last.ckpt")])
    assert type(cli.model).__name__ == "SFTModule"
    for key, value in trained.model.state_dict().items():
        assert torch.equal(cli.model.model.state_dict()[key], value), key
    assert (tmp_path / "eval" / "ckpt-last" / "metrics.json").is_file()  # named after the run and checkpoint


def test_two_process_evaluation_counts_every_question_once(tmp_path, synthetic_root, tiny_model_dir):
    """FSDP2 on 2 gloo processes, 7 questions in batches of 2: the ranks get 4 batches of padded work each, and
    the metrics and the predictions file hold each of the 7 questions exactly once."""
    run_on_two_processes(tmp_path, overlay(tmp_path, synthetic_root, tiny_model_dir))
    run = tmp_path / "eval" / "tiny"
    metrics = json.loads((run / "metrics.json").read_text())
    rows = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    data = CTVQADataModule(data_dir=str(synthetic_root), processor_path=str(tiny_model_dir), max_samples=7)
    data.setup("test")
    assert [r["id"] for r in rows] == [r["id"] for r in data.datasets["test"].records]
    assert sum(v for k, v in metrics.items() if k.startswith("n/")) == 7
    assert metrics["accuracy"] == pytest.approx(sum(r["correct"] for r in rows) / 7)
    assert json.loads((run / "run.json").read_text())["world_size"] == 2


def test_an_evaluation_never_replaces_another_ones_results(tmp_path, synthetic_root, tiny_model_dir):
    """The run folder of another evaluation (another model here) is refused before any work; overwrite allows it."""
    cfg = overlay(tmp_path, synthetic_root, tiny_model_dir)
    run = tmp_path / "eval" / "tiny"
    run.mkdir(parents=True)
    other = '{"model": "lightning_modules.evaluator.VQAEvaluator", "model_path": "artifacts/other-model"}'
    (run / "run.json").write_text(other)
    with pytest.raises(FileExistsError, match=r"eval/tiny holds the results of another evaluation \(model_path"):
        main(["test", "--config", EVAL, "--config", cfg])
    assert (run / "run.json").read_text() == other
    config = yaml.safe_load(Path(cfg).read_text())
    config["trainer"]["callbacks"][0]["init_args"]["overwrite"] = True
    Path(cfg).write_text(yaml.safe_dump(config))
    main(["test", "--config", EVAL, "--config", cfg])
    assert json.loads((run / "run.json").read_text())["model_path"] == str(tiny_model_dir)


def run_on_two_processes(tmp_path: Path, cfg: str, model: dict | None = None) -> None:
    """``cli.py test`` with configs/eval.yaml and ``cfg`` (and ``model`` settings) under FSDP2 on 2 gloo processes,
    7 questions in batches of 2, as a subprocess; asserts that it succeeded."""
    import os
    import subprocess
    import sys

    from tests.lightning_modules.test_fsdp import FSDP2_STRATEGY

    extra = {
        "data": {"max_samples": 7, "eval_batch_size": 2},
        "model": {"init_args": model or {}},
        "trainer": {"devices": 2, "strategy": FSDP2_STRATEGY},
    }
    (tmp_path / "fsdp.yaml").write_text(yaml.safe_dump(extra))
    cmd = [sys.executable, "cli.py", "test", "--config", EVAL, "--config", cfg, "--config", str(tmp_path / "fsdp.yaml")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
