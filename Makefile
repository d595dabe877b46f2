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

.PHONY: demo demo-volume demo-pairing paper calibrate study bench bench-peers bench-gpu docs test test-quick lint install install-test clean

# The docs' results pages (docs/results/) are rendered from the JSON each measuring target collects
# into docs/results/data/ -- only from its default run (default folder and seed), so that a second
# seed or a trial run never replaces the published figures.
PAGES = $(BIN)/python -m meg2fmri.bench.pages

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install $(TORCH_SPEC) $(PIP_PINS) -e .
	touch $@

# LitData (a loader peer, tests/test_peers.py) without its torchvision requirement: the test extra
# holds the rest of what it needs (pyproject)
LITDATA_SPEC ?= litdata==0.2.76
$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install $(TORCH_SPEC) $(PIP_PINS) -e ".[test]"
	$(BIN)/pip install --no-deps $(LITDATA_SPEC)
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

# The demo (docs/quickstart.md, docs/results/demo.md). Four held-out subjects (two F, two M) so that `test` (held-out subjects
# x held-out stories 6 and 12) has 8 runs and intervals can resample subjects. Fixed a priori, not
# chosen on any held-out data: the slice (the one with the most true source-map mass of the training
# subjects, from the simulator's ground truth, as a user would pick one from anatomy); one sample
# per fMRI volume (--stride 0.71 = TR: every volume of a story is a target); band power over 4-s
# epochs (the generator's envelope time scales are 2 and 8 s) with a 7-s lag (epoch centre + the
# canonical HRF's 5-s peak); 12 epochs, learning rate halved every 4 (the paper: 125 and 20; 760
# steps of 32, the step count of earlier demos, as the 10-minute budget allows);
# --smooth 1 (FWHM 2.4 px, below the source blobs' width). Chosen by grouped cross-validation on
# training subjects x stories: every ridge penalty (one per pixel). `meg2fmri oracle` writes the noise-free
# truth (the ceiling).
DEMO_HELD_OUT ?= 09,10,11,12
DEMO_EPOCHS ?= 12
DEMO_LR_STEP ?= 4
DEMO_SEED ?= 0
# The world is synth's default, the calibrated one (docs/results/calibration.md).
# Extra `synth` options, e.g. an earlier world (docs/guide/synth.md: "Earlier worlds"):
#   DEMO_SYNTH="--world 2026-12"   (the defaults before calibration)
#   DEMO_SYNTH="--world easy"      (2026-12 without hidden or MEG-only sources or physiological noise)
DEMO_SYNTH ?=
DEMO_SMOOTH ?= 1
DEMO_INGEST = --held-out $(DEMO_HELD_OUT) --features bandpower --epoch 4 --lag 7 --stride 0.71
demo: $(VENV)/.installed
	$(BIN)/meg2fmri synth --preset demo --out $(DEMO_DIR)/bids --overwrite --seed $(DEMO_SEED) $(DEMO_SYNTH)
	rm -rf $(DEMO_DIR)/ingest $(DEMO_DIR)/runs $(DEMO_DIR)/eval
	slice=$$($(BIN)/meg2fmri oracle --peak-slice --bids-root $(DEMO_DIR)/bids --exclude $(DEMO_HELD_OUT)) && \
	$(BIN)/ingest --bids-root $(DEMO_DIR)/bids --out $(DEMO_DIR)/ingest $(DEMO_INGEST) --slice $$slice
	for variant in cgan no_adversarial shuffled; do \
		$(BIN)/meg2fmri train --shards $(DEMO_DIR)/ingest --out $(DEMO_DIR)/runs/$$variant --variant $$variant \
			--epochs $(DEMO_EPOCHS) --lr-step-epochs $(DEMO_LR_STEP) --smooth $(DEMO_SMOOTH) --seed $(DEMO_SEED) --quiet || exit 1; \
	done
	$(BIN)/meg2fmri oracle --bids-root $(DEMO_DIR)/bids --ingest $(DEMO_DIR)/ingest --out $(DEMO_DIR)/oracle.npz
	$(BIN)/meg2fmri evaluate --shards $(DEMO_DIR)/ingest --runs $(DEMO_DIR)/runs --out $(DEMO_DIR)/eval \
		--bids-root $(DEMO_DIR)/bids --oracle $(DEMO_DIR)/oracle.npz
	if [ "$(DEMO_DIR):$(DEMO_SEED):$(DEMO_SYNTH)" = "demo-output:0:" ]; then \
		$(PAGES) --collect demo $(DEMO_DIR)/eval/results.json; fi
	@echo "demo: synthetic ds004078-like dataset in $(DEMO_DIR)/bids (ground truth: $(DEMO_DIR)/bids/derivatives/synth)"
	@echo "demo: Zarr cache, shards and index in $(DEMO_DIR)/ingest; runs (checkpoints, log.jsonl) in $(DEMO_DIR)/runs"
	@echo "demo: results $(DEMO_DIR)/eval/results.md (test, seen_story, seen_subject); predictions $(DEMO_DIR)/eval/predictions/"

# Whole-brain targets (docs/guide/whole-brain.md): the demo's dataset and settings
# with --target volume (every voxel in the training-data brain mask, float16), the low-rank generator
# head (components explaining half the training changes' variance, chosen on training data), the same
# three variants, ridge and stimulus on every voxel, the oracle; evaluate writes r and R^2 maps as
# NIfTI. Reuses the demo's dataset (and its Zarr cache, hard-linked) when `make demo` ran first, so
# nothing is decoded twice; otherwise it writes them. Then `generate` turns one held-out recording
# (sub-12, story 6) into a synthetic BOLD NIfTI.
VOLUME_DIR ?= demo-volume
demo-volume: $(VENV)/.installed
	if [ ! -f $(DEMO_DIR)/bids/derivatives/synth/synth_config.json ]; then \
		$(BIN)/meg2fmri synth --preset demo --out $(DEMO_DIR)/bids --overwrite --seed $(DEMO_SEED) $(DEMO_SYNTH); fi
	rm -rf $(VOLUME_DIR) && mkdir -p $(VOLUME_DIR)/ingest
	if [ -d $(DEMO_DIR)/ingest/cache.zarr ]; then cp -al $(DEMO_DIR)/ingest/cache.zarr $(VOLUME_DIR)/ingest/; fi
	$(BIN)/ingest --bids-root $(DEMO_DIR)/bids --out $(VOLUME_DIR)/ingest $(DEMO_INGEST) --target volume --quiet
	for variant in cgan no_adversarial shuffled; do \
		$(BIN)/meg2fmri train --shards $(VOLUME_DIR)/ingest --out $(VOLUME_DIR)/runs/$$variant --variant $$variant \
			--epochs $(DEMO_EPOCHS) --lr-step-epochs $(DEMO_LR_STEP) --seed $(DEMO_SEED) --quiet || exit 1; \
	done
	$(BIN)/meg2fmri oracle --bids-root $(DEMO_DIR)/bids --ingest $(VOLUME_DIR)/ingest --out $(VOLUME_DIR)/oracle.npz
	$(BIN)/meg2fmri evaluate --shards $(VOLUME_DIR)/ingest --runs $(VOLUME_DIR)/runs --out $(VOLUME_DIR)/eval \
		--bids-root $(DEMO_DIR)/bids --oracle $(VOLUME_DIR)/oracle.npz
	$(BIN)/meg2fmri generate --model $(VOLUME_DIR)/runs/cgan --quiet \
		--meg $(DEMO_DIR)/bids/sub-12/meg/sub-12_task-RDR_run-6_meg.fif \
		--events $(DEMO_DIR)/bids/sub-12/meg/sub-12_task-RDR_run-6_events.tsv \
		--out $(VOLUME_DIR)/generated/sub-12_task-RDR_run-6_desc-meg2fmri_bold.nii.gz
	if [ "$(VOLUME_DIR):$(DEMO_SEED):$(DEMO_SYNTH)" = "demo-volume:0:" ]; then \
		$(PAGES) --collect whole-brain $(VOLUME_DIR)/eval/results.json; fi
	@echo "demo-volume: results $(VOLUME_DIR)/eval/results.md; r and R^2 maps $(VOLUME_DIR)/eval/maps/; mask $(VOLUME_DIR)/ingest/mask.nii.gz"
	@echo "demo-volume: synthetic BOLD from sub-12's story-6 MEG: $(VOLUME_DIR)/generated/"

# After `make demo`: the paper's protocol end to end on the demo's data: --pairing paper (one pair per
# run, the paper's 0.64-s channel-mean features and its slice choice, made on training runs only), raw
# image targets, the paper's schedule (125 epochs, lr halved every 20) and reconstruction weight (1),
# scored with MSE on [0, 1] and scikit-image SSIM (7x7, per-image data_range) beside its 0.046 / 0.622.
paper: $(VENV)/.installed
	rm -rf $(DEMO_DIR)/paper && mkdir -p $(DEMO_DIR)/paper/ingest
	cp -al $(DEMO_DIR)/ingest/cache.zarr $(DEMO_DIR)/paper/ingest/
	$(BIN)/ingest --out $(DEMO_DIR)/paper/ingest --from-cache --pairing paper --features mean \
		--held-out $(DEMO_HELD_OUT) --quiet
	$(BIN)/meg2fmri train --shards $(DEMO_DIR)/paper/ingest --out $(DEMO_DIR)/paper/runs/cgan --target image \
		--recon-weight 1 --epochs 125 --lr-step-epochs 20 --seed $(DEMO_SEED) --quiet
	$(BIN)/meg2fmri evaluate --protocol paper --shards $(DEMO_DIR)/paper/ingest --runs $(DEMO_DIR)/paper/runs \
		--out $(DEMO_DIR)/paper/eval
	if [ "$(DEMO_DIR):$(DEMO_SEED)" = "demo-output:0" ]; then \
		$(PAGES) --collect paper $(DEMO_DIR)/paper/eval/paper_protocol.json; fi

# After `make demo`: --pairing windows vs --pairing paper with the paper's features (0.64-s channel
# means, z-scored across channels), both cGANs scored on the same held-out windows pairs. The paper
# pairing has one sample per run, so its cGAN learns raw images (--target image): deviation targets
# would all be the mean image. Re-pairs from demo's Zarr cache (hard links), no FIF/NIfTI read.
demo-pairing: $(VENV)/.installed
	rm -rf $(DEMO_DIR)/pairing && mkdir -p $(DEMO_DIR)/pairing/windows $(DEMO_DIR)/pairing/paper
	slice=$$($(BIN)/meg2fmri oracle --peak-slice --bids-root $(DEMO_DIR)/bids --exclude $(DEMO_HELD_OUT)) && \
	for p in windows paper; do \
		cp -al $(DEMO_DIR)/ingest/cache.zarr $(DEMO_DIR)/pairing/$$p/ && \
		$(BIN)/ingest --out $(DEMO_DIR)/pairing/$$p --from-cache --held-out $(DEMO_HELD_OUT) \
			--pairing $$p --features mean --slice $$slice --quiet || exit 1; \
	done
	$(BIN)/meg2fmri train --shards $(DEMO_DIR)/pairing/windows --out $(DEMO_DIR)/pairing/runs/cgan \
		--epochs $(DEMO_EPOCHS) --lr-step-epochs $(DEMO_LR_STEP) --smooth $(DEMO_SMOOTH) --quiet
	$(BIN)/meg2fmri train --shards $(DEMO_DIR)/pairing/paper --out $(DEMO_DIR)/pairing/paper-run --target image --quiet
	$(BIN)/meg2fmri evaluate --shards $(DEMO_DIR)/pairing/windows --runs $(DEMO_DIR)/pairing/runs \
		--out $(DEMO_DIR)/pairing/eval --bids-root $(DEMO_DIR)/bids --extra paper_pairing=$(DEMO_DIR)/pairing/paper-run

# The docs' calibration page (docs/results/calibration.md): `synth --calibrate` on the
# demo preset for the calibrated world (seeds 0 and 1) and the previous defaults (--world 2026-12, seed
# 0), each table in $(CALIBRATE_DIR)/NAME.md with its exit status (1 = a figure out of range). Each
# dataset is deleted once measured (6.8 GB each); a table already written is not measured again.
CALIBRATE_DIR ?= calibrate-output
CALIBRATE_CASES ?= calibrated:0 calibrated:1 2026-12:0
CALIBRATE_PRESET ?= demo
calibrate: $(VENV)/.installed
	mkdir -p $(CALIBRATE_DIR)
	for case in $(CALIBRATE_CASES); do \
		world=$${case%%:*}; seed=$${case##*:}; name=$$world-seed$$seed; \
		[ -f $(CALIBRATE_DIR)/$$name.md ] && continue; \
		$(BIN)/meg2fmri synth --preset $(CALIBRATE_PRESET) --world $$world --seed $$seed --out $(CALIBRATE_DIR)/$$name --overwrite --quiet || exit 1; \
		$(BIN)/meg2fmri synth --calibrate $(CALIBRATE_DIR)/$$name > $(CALIBRATE_DIR)/$$name.tmp; \
		echo "exit status $$?" >> $(CALIBRATE_DIR)/$$name.tmp && mv $(CALIBRATE_DIR)/$$name.tmp $(CALIBRATE_DIR)/$$name.md; \
		rm -rf $(CALIBRATE_DIR)/$$name; \
	done
	if [ "$(CALIBRATE_DIR):$(CALIBRATE_CASES)" = "calibrate-output:calibrated:0 calibrated:1 2026-12:0" ]; then \
		$(PAGES) --collect calibration $(CALIBRATE_DIR); fi
	@echo "calibrate: tables in $(CALIBRATE_DIR)/*.md"

# The study (docs/study.md): an SMN4Lang-shaped experiment with a learning curve. 12 subjects;
# subjects 01-08 hear stories 1-16 and 09-12 stories 17-22 (`test`), 270 s each: 9.6 h of training
# data, nested sizes of 2, 4, 8 and 16 stories; MEG written at 200 Hz (synth --meg-sfreq: 5x less
# disk, the same signal and noise density below 66 Hz; ingest works at 100 Hz). Everything fixed a
# priori: the demo's features and slice rule, cGAN 4 epochs (lr halved every 2) at every size, the
# whole-brain cGAN 2 epochs at the largest, one ROI from the largest training set. About 2.5 hours on
# 2 cores; the raw MEG and each size's shards are deleted once no later step reads them (--keep-data
# keeps them: 55 GB at peak). Resumable: `make study` again after a kill redoes only the step that
# was running. Run it in the background with its log:
#   nohup make study > study.log 2>&1 &
# A fresh seed of the largest size:  make study STUDY_SEED=1 STUDY_DIR=study-seed1 STUDY_ARGS="--sizes 16"
STUDY_DIR ?= study-output
STUDY_SEED ?= 0
STUDY_ARGS ?=
study: $(VENV)/.installed
	$(BIN)/bench study --out $(STUDY_DIR) --seed $(STUDY_SEED) $(STUDY_ARGS)
	if [ "$(STUDY_DIR):$(STUDY_SEED):$(STUDY_ARGS)" = "study-output:0:" ]; then \
		$(PAGES) --collect study $(STUDY_DIR)/study.json; fi

# Every benchmark, one JSON each in $(BENCH_DIR), then the docs' benchmarks page (bench/ docstrings
# say what each measures; the ingest bench writes the bench preset first: minutes, 7.5 GB).
BENCH_DIR ?= bench-output
bench: $(VENV)/.installed-test
	mkdir -p $(BENCH_DIR)
	$(BIN)/bench kernels --json $(BENCH_DIR)/kernels.json
	$(BIN)/bench ingest --work bench-work --subjects 01,02,03,04 --json $(BENCH_DIR)/ingest.json
	$(BIN)/bench loader --work bench-work --json $(BENCH_DIR)/loader.json
	$(BIN)/bench loader --target volume --work bench-work --json $(BENCH_DIR)/loader-volume.json
	$(BIN)/bench train --work bench-work --json $(BENCH_DIR)/train.json
	if [ "$(BENCH_DIR)" = "bench-output" ]; then $(PAGES) --collect benchmarks $(BENCH_DIR); fi

# The loader against LitData and MosaicML Streaming on the same samples (docs/guide/loader.md,
# "Against the peers"). Both need torchvision, whose wheel on the index needs torch 2.14.1 (a CUDA
# build, about 5.5 GB), beside which our CPU pin cannot live: the peers get their own venv, in which
# bench/peers.py times our loader and theirs in one process.
PEERS_VENV ?= .venv-peers
PEERS_TORCH ?= torch==2.14.1 torchvision==0.29.1
$(PEERS_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(PEERS_VENV)/bin/pip install $(PEERS_TORCH) $(PIP_PINS) -e ".[peers]"
	touch $@
bench-peers: $(VENV)/.installed-test $(PEERS_VENV)/.installed
	mkdir -p $(BENCH_DIR)
	$(BIN)/bench loader --work bench-work --peers $(PEERS_VENV)/bin/python --json $(BENCH_DIR)/loader-peers.json
	$(BIN)/bench loader --target volume --work bench-work --peers $(PEERS_VENV)/bin/python \
		--json $(BENCH_DIR)/loader-volume-peers.json
	if [ "$(BENCH_DIR)" = "bench-output" ]; then $(PAGES) --collect benchmarks $(BENCH_DIR); fi

# The GPU check, one command on a machine with an NVIDIA GPU (about 8 minutes): a CUDA torch build in
# its own venv, the CUDA tests (marker gpu), bench loader (the prefetcher's delivery to the device
# against pinned copy_ of the same bytes) and bench train at slice and whole-brain sizes (the share
# of a step spent waiting for data), all in one JSON, $(GPU_DIR)/gpu.json. Where the machine has no
# package index, point GPU_TORCH at wheels on its disk.
GPU_VENV ?= .venv-gpu
GPU_TORCH ?= torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128 --extra-index-url https://pypi.org/simple
GPU_DIR ?= bench-gpu-output
bench-gpu:
	$(MAKE) install-test VENV=$(GPU_VENV) TORCH_SPEC="$(GPU_TORCH)"
	mkdir -p $(GPU_DIR)
	$(GPU_VENV)/bin/python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'bench-gpu: torch sees no CUDA device')"
	$(GPU_VENV)/bin/python -m pytest -m gpu -q --junitxml $(GPU_DIR)/cuda-tests.xml -p no:cacheprovider || true
	$(GPU_VENV)/bin/bench loader --work bench-work --repeats 3 --min-seconds 0.2 --paper-samples 2 --json $(GPU_DIR)/loader.json
	$(GPU_VENV)/bin/bench train --work bench-work --steps 100 --repeats 2 --json $(GPU_DIR)/train.json
	$(GPU_VENV)/bin/bench train --work bench-work --steps 100 --repeats 2 --target volume --json $(GPU_DIR)/train-volume.json
	$(GPU_VENV)/bin/python -m meg2fmri.bench.report --merge $(GPU_DIR) --out $(GPU_DIR)/gpu.json

# The documentation site (mkdocs-material; docs/, mkdocs.yml) into site/, offline. The results pages
# are rendered first from docs/results/data/.
docs: $(VENV)/.installed-test
	$(PAGES)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

lint: $(VENV)/.installed-test
	$(BIN)/ruff check meg2fmri ingest shards loader model bench tests

test: lint
	$(PAGES)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site --quiet
	$(BIN)/python -m pytest

# The developer's loop: everything but the tests marked slow, s3, ray or gpu (under 2 minutes).
test-quick: $(VENV)/.installed-test
	$(BIN)/python -m pytest -m "not slow and not s3 and not ray and not gpu" -q

clean:
	rm -rf $(VENV) $(DEMO_DIR) $(VOLUME_DIR) $(CALIBRATE_DIR) site .pytest_cache
