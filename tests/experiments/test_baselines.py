"""The comparison table's one command (experiments/baselines.py): the shipped spec, the commands it builds, the table
from run folders, and an end-to-end run on tiny models that a re-run skips."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

import pytest
import yaml

from datamodules.ctrate import CTRATE_LABELS
from datamodules.vqa_records import QUESTION_TYPES
from evaluation.diagnosis import DiagnosisMetrics
from evaluation.metrics import prediction_row
from evaluation.run_folder import write_run
from experiments.baselines import (
    DONE,
    command,
    load_table,
    main,
    problems,
    render_csv,
    render_markdown,
    table_rows,
)
from experiments.baselines import (
    run as run_table,
)
from experiments.replicate import write_yaml

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "configs" / "experiments" / "baselines.yaml"


def spec_file(tmp_path: Path, **spec) -> str:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"eval_config": str(ROOT / "configs" / "eval.yaml"), **spec}))
    return str(path)


@pytest.mark.parametrize("smoke", [False, True])
def test_shipped_spec_loads(smoke, monkeypatch):
    monkeypatch.chdir(ROOT)  # the spec's paths are relative to the repository root, as `make` runs it
    table = load_table([str(SPEC)], smoke=smoke)
    assert {m.group for m in table.models} == {"general", "medical", "ours"}
    assert (ROOT / table.eval_config).is_file()
    budgets = {table.settings(m).max_new_tokens for m in table.models}
    assert budgets == ({8} if smoke else {None}) and (table.n_boot == 200) == smoke


def test_shipped_spec_commands_parse(tmp_path, capsys, monkeypatch):
    """Every shipped model's ``cli.py test`` command resolves (its overlay's keys are the datamodule's and
    the evaluator's) into the settings the spec asked for."""
    from cli import main as cli

    monkeypatch.chdir(ROOT)
    table = load_table([str(SPEC)], smoke=True)
    table.out = str(tmp_path)
    for model in table.models:
        args, overlay = command(table, model)
        config = Path(args[args.index("--config", 3) + 1])
        write_yaml(config, overlay)
        with pytest.raises(SystemExit) as done:
            cli([*args, "--print_config"])
        assert done.value.code in (0, None)
        resolved = yaml.safe_load(capsys.readouterr().out)
        assert resolved["model"]["init_args"]["model_path"] == model.path
        assert resolved["data"]["init_args"]["max_samples"] == 8
        zero_shot = resolved["data"]["init_args"]["system_prompt"]
        assert (zero_shot is None) == (model.group == "ours")


def test_commands_prompt_zero_shot_models_with_the_answer_format(tmp_path):
    models = [
        {"name": "qwen", "path": "/m/qwen", "group": "general", "overrides": ["--trainer.precision", "bf16-true"]},
        {"name": "huatuo", "path": "/m/huatuo", "group": "medical", "trust_remote_code": True, "batch_size": 2},
        {"name": "ours", "path": "/m/ours", "group": "ours", "max_new_tokens": 512},
    ]
    table = load_table([spec_file(tmp_path, models=models, out=str(tmp_path / "out"), split={"max_samples": 5})], False)
    (qwen, qwen_overlay), (huatuo, huatuo_overlay), (ours, ours_overlay) = [command(table, m) for m in table.models]
    assert qwen[:3] == ["test", "--config", table.eval_config] and qwen[-2:] == ["--trainer.precision", "bf16-true"]
    assert "--model.init_args.trust_remote_code" not in qwen
    assert huatuo[huatuo.index("--model.init_args.trust_remote_code") + 1] == "true"
    assert ours[ours.index("--model.init_args.model_path") + 1] == "/m/ours"
    for overlay in (qwen_overlay, huatuo_overlay):
        prompt = overlay["data"]["system_prompt"]
        assert "exactly one of the options" in prompt and "<answer></answer>" in prompt and "inset" in prompt
    assert ours_overlay["data"]["system_prompt"] is None  # the training prompt
    assert ours_overlay["model"]["init_args"]["max_new_tokens"] == 512 and "model" not in qwen_overlay
    assert huatuo_overlay["data"]["eval_batch_size"] == 2 and qwen_overlay["data"]["max_samples"] == 5
    report = qwen_overlay["trainer"]["callbacks"][0]["init_args"]
    assert report["out_dir"] == str(tmp_path / "out" / "runs") and report["name"] == "qwen"
    with pytest.raises(ValueError, match="group must be one of"):
        load_table([spec_file(tmp_path, models=[{"name": "x", "path": "/m", "group": "radiology"}])], False)


def fake_run(run_dir: Path, skill: float, n: int = 12) -> None:
    """A run folder as ``cli.py test`` writes it, from made-up completions right on a ``skill`` share of questions."""
    predictions = []
    for i in range(n):
        truth = "yes" if i % 2 else "no"
        answer = truth if i < skill * n else {"yes": "no", "no": "yes"}[truth]
        meta = {"id": f"q{i}", "question_type": "presence", "question": "?", "options": ["yes", "no"], "answer": truth}
        meta["abnormality"] = CTRATE_LABELS[i % 3]
        predictions.append(prediction_row(f"<answer>{answer}</answer>", meta, p_yes=0.9 if truth == "yes" else 0.1))
    metrics = DiagnosisMetrics(QUESTION_TYPES, CTRATE_LABELS)
    metrics.update(predictions)
    write_run(run_dir, metrics.compute(), predictions, {"name": run_dir.name, "split": "test"})


def test_table_groups_rows_and_shows_failed_ones(tmp_path):
    models = [
        {"name": "ours", "path": "/m/ours", "group": "ours"},
        {"name": "medgemma", "path": "/m/medgemma", "group": "medical"},
        {"name": "qwen", "path": "/m/qwen", "group": "general"},
    ]
    table = load_table([spec_file(tmp_path, models=models, out=str(tmp_path), n_boot=100)], False)
    fake_run(tmp_path / "runs" / "ours", skill=1.0)
    fake_run(tmp_path / "runs" / "qwen", skill=0.5)
    rows = table_rows(table, {"medgemma": "exit status 1: OSError: no weights"})
    assert [(r["name"], r["status"]) for r in rows] == [("qwen", "ok"), ("medgemma", "failed"), ("ours", "ok")]
    assert rows[2]["metrics"]["accuracy"] == {"value": 1.0, "low": 1.0, "high": 1.0}
    assert rows[0]["metrics"]["accuracy"]["value"] == 0.5 and "error" not in rows[0]  # metrics.json agreed
    md = render_markdown(table, rows)
    sections = [md.index(f"**{title}**") for title in ("General-purpose VLMs", "Medical VLMs", "Ours")]
    assert sections == sorted(sections)
    assert "| medgemma | failed |" in md and "medgemma: exit status 1: OSError: no weights" in md
    assert "| ours | 1.000 [1.000, 1.000] |" in md and "percentile bootstrap over questions (100 resamples" in md
    lines = list(csv.DictReader(io.StringIO(render_csv(rows))))
    assert [line["status"] for line in lines] == ["ok", "failed", "ok"] and lines[2]["accuracy_low"] == "1.0"


def test_runner_on_tiny_models_of_three_families_then_resumes(tmp_path, synthetic_root, tiny_model_dir, caplog):
    """Tiny models of three families (InternVL general, Gemma 3 medical, Qwen2.5-VL ours) on 6 test questions, one
    built by the runner itself; a re-run skips all three and reports a new failing one."""
    models = [
        {"name": "tiny-general", "path": str(tmp_path / "internvl"), "group": "general", "tiny_family": "internvl"},
        {"name": "tiny-medical", "path": str(tmp_path / "gemma3"), "group": "medical", "tiny_family": "gemma3"},
        {"name": "tiny-ours", "path": str(tiny_model_dir), "group": "ours"},
    ]
    spec = {
        "out": str(tmp_path / "out"),
        "split": {"data_dir": str(synthetic_root), "synthetic": None, "max_samples": 6, "num_workers": 0},
        "every_model": {"max_new_tokens": 8, "batch_size": 6},
        "n_boot": 100,
        "models": models,
    }
    # In this process (a process per model would spend most of the test importing); the re-run below is the CLI's.
    _, first = run_table(load_table([spec_file(tmp_path, **spec)], smoke=False), runner=in_this_process)
    assert problems(first) == []
    out = tmp_path / "out"
    summary = json.loads((out / "table.json").read_text())
    assert [(r["name"], r["status"], r["n"]) for r in summary["rows"]] == [
        ("tiny-general", "ok", 6),
        ("tiny-medical", "ok", 6),
        ("tiny-ours", "ok", 6),
    ]
    md = (out / "table.md").read_text()
    assert "| tiny-general |" in md and "| tiny-ours |" in md and "Problems" not in md
    run = json.loads((out / "runs" / "tiny-ours" / "run.json").read_text())
    assert run["model_path"] == str(tiny_model_dir) and run["max_new_tokens"] == 8
    assert json.loads((tmp_path / "gemma3" / "config.json").read_text())["model_type"] == "gemma3"
    reports = {m["name"]: (out / "runs" / m["name"] / "report.md").stat().st_mtime_ns for m in models}

    caplog.clear()
    spec["models"] = [*models, {"name": "gone", "path": str(tmp_path / "nowhere"), "group": "medical"}]
    with caplog.at_level(logging.INFO, logger="evaluation.cli_runs"):
        assert main(["--config", spec_file(tmp_path, **spec)]) == 1  # a model failed: status 1, table still written
    assert sum("evaluated before, skipped" in r.getMessage() for r in caplog.records) == 3
    assert reports == {m["name"]: (out / "runs" / m["name"] / "report.md").stat().st_mtime_ns for m in models}
    rows = json.loads((out / "table.json").read_text())["rows"]
    assert [(r["name"], r["status"]) for r in rows] == [
        ("tiny-general", "ok"),
        ("tiny-medical", "ok"),
        ("gone", "failed"),
        ("tiny-ours", "ok"),
    ]
    assert "does not exist" in rows[2]["error"] and (out / "runs" / "tiny-ours" / DONE).is_file()


def in_this_process(args: list[str], log_path: Path) -> int:
    """cli.py in the test's own process."""
    from cli import run as cli_run

    return cli_run(args)
