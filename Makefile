# Two commands that work on a fresh machine with only Python 3.11 and pip:
#   make demo   - create .venv, install, run the main job on the built-in synthetic dataset
#   make test   - create .venv, install with test extras, lint, run the tests
# Torch is pinned for CPU machines; users with GPUs override it, e.g.
#   make demo TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
# Pinning these two stops pip's resolver from walking dozens of boto3/aiobotocore releases.
PIP_PINS ?= aiobotocore==3.10.0 boto3==1.43.117
DEMO_DIR ?= demo-output
BIN := $(VENV)/bin

.PHONY: demo demo-pairing test lint install install-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install $(TORCH_SPEC) $(PIP_PINS) -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install $(TORCH_SPEC) $(PIP_PINS) -e ".[test]"
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

# The demo's slice is 47: the axial slice through the synthetic sources' peak (ingest's automatic
# choice follows noise on synthetic data). Band-power features over 4-s epochs, 7 s before each
# volume: the synthetic coupling drives BOLD by the MEG sources' band envelopes, which a window mean
# averages away and a 0.64-s epoch barely samples. A short schedule: 30 epochs, learning rate
# halved every 10 (the paper: 125 and 20). synth-oracle writes the noise-free truth (the ceiling).
DEMO_SLICE ?= 47
DEMO_EPOCHS ?= 30
# Extra `synth` options, e.g. DEMO_SYNTH="--bold-percent 6": a coupling 3x the realistic default, at
# which the held-out MSE/SSIM gain of the true signal over the mean image becomes measurable (README).
DEMO_SYNTH ?=
# The generator's change from the mean image is filtered with a Gaussian of this sigma (px; FWHM 16 mm
# at the 32-px slice's 6.6-mm pixels): BOLD changes are smooth, pixel noise is not. The paper has no
# such filter; the demo also trains that cGAN (row cgan_unsmoothed) to show what it changes.
DEMO_SMOOTH ?= 1
demo: $(VENV)/.installed
	$(BIN)/synth --preset demo --out $(DEMO_DIR)/bids --overwrite $(DEMO_SYNTH)
	rm -rf $(DEMO_DIR)/ingest $(DEMO_DIR)/runs $(DEMO_DIR)/runs-unsmoothed $(DEMO_DIR)/eval
	$(BIN)/ingest --bids-root $(DEMO_DIR)/bids --out $(DEMO_DIR)/ingest --subjects all \
		--features bandpower --epoch 4 --lag 7 --slice $(DEMO_SLICE)
	for variant in cgan no_adversarial shuffled; do \
		$(BIN)/train --shards $(DEMO_DIR)/ingest --out $(DEMO_DIR)/runs/$$variant --variant $$variant \
			--epochs $(DEMO_EPOCHS) --lr-step-epochs 10 --smooth $(DEMO_SMOOTH) --quiet || exit 1; \
	done
	$(BIN)/train --shards $(DEMO_DIR)/ingest --out $(DEMO_DIR)/runs-unsmoothed/cgan \
		--epochs $(DEMO_EPOCHS) --lr-step-epochs 10 --quiet
	$(BIN)/synth-oracle --bids-root $(DEMO_DIR)/bids --ingest $(DEMO_DIR)/ingest --out $(DEMO_DIR)/oracle.npz
	$(BIN)/evaluate --shards $(DEMO_DIR)/ingest --runs $(DEMO_DIR)/runs --out $(DEMO_DIR)/eval \
		--oracle $(DEMO_DIR)/oracle.npz --extra cgan_unsmoothed=$(DEMO_DIR)/runs-unsmoothed/cgan
	@echo "demo: synthetic ds004078-like dataset in $(DEMO_DIR)/bids (ground truth: $(DEMO_DIR)/bids/derivatives/synth)"
	@echo "demo: Zarr cache, shards and index in $(DEMO_DIR)/ingest; runs (checkpoints, log.jsonl) in $(DEMO_DIR)/runs"
	@echo "demo: results $(DEMO_DIR)/eval/results.md; figures $(DEMO_DIR)/eval/*.png (pairs, changes, training_curves, slice_selection)"

# After `make demo`: --pairing windows vs --pairing paper with the paper's features (0.64-s channel
# means, z-scored across channels), both cGANs scored on the same held-out windows pairs. Re-pairs
# from demo's Zarr cache (hard links), no FIF/NIfTI read.
demo-pairing: $(VENV)/.installed
	rm -rf $(DEMO_DIR)/pairing && mkdir -p $(DEMO_DIR)/pairing/windows $(DEMO_DIR)/pairing/paper
	for p in windows paper; do \
		cp -al $(DEMO_DIR)/ingest/cache.zarr $(DEMO_DIR)/pairing/$$p/ && \
		$(BIN)/ingest --bids-root $(DEMO_DIR)/bids --out $(DEMO_DIR)/pairing/$$p --subjects all --from-cache \
			--pairing $$p --features mean --slice $(DEMO_SLICE) --quiet || exit 1; \
	done
	$(BIN)/train --shards $(DEMO_DIR)/pairing/windows --out $(DEMO_DIR)/pairing/runs/cgan \
		--epochs $(DEMO_EPOCHS) --lr-step-epochs 10 --quiet
	$(BIN)/train --shards $(DEMO_DIR)/pairing/paper --out $(DEMO_DIR)/pairing/paper-run --quiet
	$(BIN)/evaluate --shards $(DEMO_DIR)/pairing/windows --runs $(DEMO_DIR)/pairing/runs \
		--out $(DEMO_DIR)/pairing/eval --extra paper_pairing=$(DEMO_DIR)/pairing/paper-run

lint: $(VENV)/.installed-test
	$(BIN)/ruff check ingest shards loader model bench tests

test: lint
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
