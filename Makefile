# Two commands do everything on a fresh machine (Python 3.11):
#   make demo   install, synthetic CT-RATE, SFT, GRPO, exports and test-split reports on the embedded default
#               (fits resume from their last checkpoint: an interrupted demo picks up where it stopped)
#   make test   install, then the test suite
#   make replicate  the paper's ablation at small scale (not part of demo)
#   make annotation  does GRPO learn from answer-only questions? cold start + GRPO vs answer-only SFT, two test sets
#   make roi-sources  zoom boxes from anatomy, organ masks and a weakly supervised classifier vs true boxes
#   make views  several candidate views (CAM top-K slices or slabs) in one prompt vs the oracle zoom (issue 22)
#   make audit  how much of the demo exports' accuracy depends on the image and on the oracle box
#   make bench  throughput and memory against TRL and the Hugging Face Trainer, side by side (benchmarks/README.md)
#   make bench-gpu  the same on one GPU in bf16
VENV ?= .venv
PY := $(VENV)/bin/python
RUN ?= runs

.PHONY: install demo test replicate annotation trl-crosscheck roi-sources views audit bench bench-gpu lint clean

$(VENV)/.installed: requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $@

install: $(VENV)/.installed

# The demo is MedReason-R1's claim at small scale: SFT on the 20 % of training patients whose questions carry
# reasoning traces, then GRPO on the other 80 %, which carry only their answers (configs/annotation/).
SFT := --config configs/sft.yaml --config configs/annotation/sft_cold_start.yaml
GRPO := --config configs/grpo.yaml --config configs/annotation/grpo_answers_only.yaml

demo: install
	$(PY) cli.py fit $(SFT) --ckpt_path last
	$(PY) cli.py export $(SFT) --ckpt_path best --out_dir artifacts/sft-model
	$(PY) cli.py test --config configs/eval.yaml --model.init_args.model_path artifacts/sft-model
	$(PY) cli.py validate $(GRPO)
	$(PY) cli.py fit $(GRPO) --ckpt_path last
	$(PY) cli.py export $(GRPO) --ckpt_path best --out_dir artifacts/grpo-model
	$(PY) cli.py test --config configs/eval.yaml --model.init_args.model_path artifacts/grpo-model
	$(PY) -m evaluation.compare runs/eval/sft-model runs/eval/grpo-model --out runs/eval/comparison

test: install
	$(PY) -m pytest -q

# The paper's ablation at small scale (README, "Replication"): about 45 min on 2 CPU cores.
replicate: install
	$(PY) -m experiments.replicate --config configs/experiments/replication.yaml

# GRPO on answer-only questions after a small annotated warm-up, against SFT on the same answers (README,
# "Annotation efficiency"): 4 arms x 3 seeds, tested on scanner A and on the shifted scanner B.
annotation: install
	$(PY) -m experiments.replicate --config configs/experiments/annotation_efficiency.yaml

# Zoom boxes without manual masks (README, "ROI proposal"): the ROI classifier, how often each source's box
# finds the true lesion, and SFT accuracy with each source's boxes.
roi-sources: install
	test -f runs/roi_classifier/checkpoints/last.ckpt || $(PY) cli.py fit --config configs/roi_classifier.yaml
	$(PY) -m evaluation.roi_proposals --config configs/experiments/roi_proposals.yaml
	$(PY) -m experiments.replicate --config configs/experiments/replication.yaml \
		--config configs/experiments/roi_sources.yaml

# Candidate views (README, "Candidate views"): SFT on K CAM views per question vs the oracle view, 3 seeds.
views: install
	test -f runs/roi_classifier/checkpoints/last.ckpt || $(PY) cli.py fit --config configs/roi_classifier.yaml
	$(PY) -m experiments.replicate --config configs/experiments/replication.yaml \
		--config configs/experiments/views.yaml
	$(PY) benchmarks/views.py
	$(PY) -m experiments.views_report --config configs/experiments/replication.yaml \
		--config configs/experiments/views.yaml

# Visual-reliance audit of the demo's exports (README, "Visual-reliance audit"): the same test questions shown a
# blank, shuffled, partial or wrong-region image, or boxes from another ROI source (CAM too once make roi-sources
# has trained the classifier). Tables, figure and cases: runs/audit/<export>/.
CAM_CKPT := runs/roi_classifier/checkpoints/last.ckpt
audit: install
	for model in sft-model grpo-model; do \
		$(PY) -m evaluation.audit --config configs/eval.yaml --model.init_args.model_path artifacts/$$model \
			--out runs/audit/$$model $(if $(wildcard $(CAM_CKPT)),--cam_checkpoint $(CAM_CKPT)) || exit 1; \
	done

# Benchmarks: our GRPO vs TRL's GRPOTrainer, our SFT vs the HF Trainer, the data path, GRPO's scaling with G and
# completion length. TRL is a benchmark-only dependency (benchmarks/requirements.txt). Numbers: runs/bench/*.json.
$(VENV)/.bench-installed: $(VENV)/.installed benchmarks/requirements.txt
	$(VENV)/bin/pip install --quiet -r benchmarks/requirements.txt
	touch $@

bench: $(VENV)/.bench-installed
	$(PY) benchmarks/grpo_vs_trl.py
	$(PY) benchmarks/sft_vs_hf.py
	$(PY) benchmarks/data_path.py
	$(PY) benchmarks/grpo_scaling.py
	$(PY) benchmarks/decode.py
	$(PY) benchmarks/views.py

# The same comparisons on one GPU, bf16 autocast on both sides (record the numbers in benchmarks/README.md).
bench-gpu: $(VENV)/.bench-installed
	$(PY) benchmarks/grpo_vs_trl.py --accelerator gpu --precision bf16-mixed
	$(PY) benchmarks/sft_vs_hf.py --accelerator gpu --precision bf16-mixed
	$(PY) benchmarks/grpo_scaling.py --accelerator gpu --precision bf16-mixed
	$(PY) benchmarks/decode.py --accelerator gpu --precision bf16-mixed --out runs/bench/decode_gpu.json
	$(PY) benchmarks/decode.py --accelerator gpu --precision bf16-mixed --hidden-size 1024 --num-layers 16 \
		--out runs/bench/decode_gpu_200m.json
	$(PY) benchmarks/grpo_vs_trl.py --accelerator gpu --precision bf16-mixed --hidden-size 1024 --num-layers 16 \
		--out runs/bench/grpo_vs_trl_gpu_200m.json

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf data runs artifacts
