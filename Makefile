# zmlx-rs developer targets. `make test` is what CI runs (through .ci/run).
PYTHON ?= python3
PYTEST_ARGS ?=
# rustup installs cargo here; `make demo` may just have done so.
export PATH := $(HOME)/.cargo/bin:$(PATH)
# The MLX build for this machine: CUDA 13 with an NVIDIA GPU, CPU elsewhere on Linux, Metal
# (the plain wheel) on macOS.
MLX_EXTRA := $(shell if [ "$$(uname)" = Darwin ]; then echo ""; \
	elif command -v nvidia-smi >/dev/null 2>&1; then echo "[cuda]"; else echo "[cpu]"; fi)
# `make demo` works in the active virtualenv, else in ./.venv (made if missing).
DEMO_PYTHON := $(if $(VIRTUAL_ENV),python,.venv/bin/python)

.PHONY: dev test test-rust test-python lint stubs wheel bench demo setup e2e

dev:
	$(PYTHON) -m pip install -q -e . --no-build-isolation

test: test-rust lint stubs test-python

test-rust:
	cargo test --quiet
	cargo clippy --all-targets --quiet -- -D warnings
	cargo fmt --check

lint:
	$(PYTHON) -m ruff check python tests benchmarks
	$(PYTHON) -m ruff format --check python tests benchmarks

stubs: dev
	$(PYTHON) -m mypy.stubtest zmlx_rs._native

test-python: dev
	$(PYTHON) -m pytest -q $(PYTEST_ARGS)

wheel:
	maturin build --release -o dist

bench: dev
	$(PYTHON) benchmarks/kernels.py
	$(PYTHON) benchmarks/detok.py
	$(PYTHON) benchmarks/inspect_checkpoint.py

# Everything a fresh machine lacks: Rust (rustup) if cargo is missing, a virtualenv, MLX for
# this machine, mlx-lm, maturin, and the extension built from source.
setup:
	@command -v cargo >/dev/null 2>&1 || curl --proto '=https' --tlsv1.2 -sSf \
		https://sh.rustup.rs | sh -s -- -y --profile minimal
	@if [ -z "$$VIRTUAL_ENV" ] && [ ! -x .venv/bin/python ]; then $(PYTHON) -m venv .venv; fi
	$(DEMO_PYTHON) -m pip install -q "maturin>=1.9,<2"
	$(DEMO_PYTHON) -m pip install -q -e ".$(MLX_EXTRA)" --no-build-isolation

demo: setup
	$(DEMO_PYTHON) -m zmlx_rs demo

e2e: dev
	$(PYTHON) benchmarks/e2e.py
