# Set-up, tests, lint and the demo. Everything runs from the repo's own .venv.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: setup test test-slow gpu-check lint format demo bench fuzz soak clean

setup: $(STAMP)

# torch + torchvision first (compressai imports torchvision; pip takes both from local disk),
# then the project with every extra. Re-runs only when pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q --disable-pip-version-check -e '.[pipeline,eval,dev]'
	touch $(STAMP)

# pytest exits 5 when it collects nothing: not a failure for a fresh checkout.
test: setup
	$(PY) -m pytest -q -p no:cacheprovider; rc=$$?; if [ $$rc -eq 5 ]; then exit 0; else exit $$rc; fi

test-slow: setup
	OSCAR_SLOW=1 $(PY) -m pytest -q -m slow -p no:cacheprovider

# On a CUDA machine: every test marked cuda, then a timed full-size oscar-sd21 round trip;
# summary in $OUT/gpu_check.json (default out/gpu-check/). Without CUDA: says so, exit 0.
# What is bit-exact across GPUs and what is not: docs/gpu.md.
gpu-check: setup
	$(PY) -m tests.gpu_check

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

demo: setup
	$(VENV)/bin/oscar demo

# The full benchmark (minutes; run on an otherwise idle machine): docs/benchmarks/bench.{json,md}
bench: setup
	$(VENV)/bin/oscar bench

# Coverage-guided fuzzing of the bitstream parser + entropy decoder (atheris, from the dev
# extra; the Hypothesis driver if atheris is missing): only BitstreamError may escape. The
# corpus grows in out/fuzz/corpus, a finding is saved as out/fuzz/crash-*. Runs in sessions
# of FUZZ_SESSION s on one corpus: under atheris the process grows ~1.2 KB per case (not
# in the code under test) at ~23 k cases/s, so a fresh process every minute keeps it under
# 4 GB (2-minute sessions reached the 4 GB limit after ~2.2 M cases).
FUZZ_SECONDS ?= 600
FUZZ_SESSION ?= 60
fuzz: setup
	mkdir -p out/fuzz; : > out/fuzz/fuzz.log; set -o pipefail; end=$$((SECONDS + $(FUZZ_SECONDS))); \
	while (( SECONDS < end )); do left=$$((end - SECONDS)); \
		OMP_NUM_THREADS=1 $(PY) -m tests.fuzz.fuzz_bitstream \
			-max_total_time=$$(( left < $(FUZZ_SESSION) ? left : $(FUZZ_SESSION) )) \
			-rss_limit_mb=4096 -malloc_limit_mb=1024 -timeout=10 -print_final_stats=1 -artifact_prefix=out/fuzz/ out/fuzz/corpus \
			2>&1 | tee -a out/fuzz/fuzz.log | grep -E '^(fuzz_bitstream|Done|==|SUMMARY)' || exit 1; \
	done; grep -hE '^(Done|fuzz_bitstream \(hyp)' out/fuzz/fuzz.log | \
		awk '{n += ($$1 == "Done") ? $$2 : $$3} END {print "make fuzz: " n " cases, none failed"}'

# Nothing lost, for longer: the property test of make test with OSCAR_NOTHING_LOST_EXAMPLES
# random mixes (default 200) of good samples and every bad kind, then repeated encode-shards
# + decode-shards jobs on such mixes against its own local S3 and Ray: every sample exactly
# once each time, every carried field byte for byte. Bounded by OSCAR_SOAK_ITERATIONS
# (default 5) and OSCAR_SOAK_SECONDS (default 1800).
OSCAR_NOTHING_LOST_EXAMPLES ?= 200
soak: setup
	OMP_NUM_THREADS=1 OSCAR_NOTHING_LOST_EXAMPLES=$(OSCAR_NOTHING_LOST_EXAMPLES) $(PY) -m pytest -q \
		-p no:cacheprovider tests/pipeline/test_nothing_lost.py -k random_mixes
	OMP_NUM_THREADS=1 $(PY) -m tests.fuzz.soak_pipeline

clean:
	rm -rf out .pytest_cache .ruff_cache
