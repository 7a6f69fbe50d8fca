# zmlx-rs developer targets. `make test` is what CI runs (through .ci/run).
PYTHON ?= python3
PYTEST_ARGS ?=

.PHONY: dev test test-rust test-python lint stubs wheel bench demo

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

demo: dev
	$(PYTHON) -m zmlx_rs demo
