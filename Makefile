# Front door. The real build is CMakeLists.txt; everything lands in build/ (binaries in build/bin/).
#   make        install missing system packages, configure and build everything
#   make test   build what the tests need (the test runner and the programs it runs), then run every
#               test through CTest
#   make demo   build sae_train only, then train an SAE on the built-in synthetic data (CPU or GPU)
#   make bench  build, then run the benchmarks (results to read into bench/RESULTS.md)
#   make experiments  build the two study drivers, then run both with --profile quick (a few minutes
#               on 2 CPU cores; runs/recon_vs_f, runs/l1_sweep; see README "Results"; finished runs
#               are skipped)
#   make sanitize  every test built with AddressSanitizer + UndefinedBehaviorSanitizer (clang, CUDA off)
#               into build-sanitize/, run through CTest; any sanitizer report fails (docs/fuzzing.md)
#   make fuzz   build the libFuzzer harnesses (clang, build-fuzz/), run the regression inputs, then
#               fuzz each format for FUZZ_SECONDS (default 60) seconds (docs/fuzzing.md)
# The CUDA backend is compiled when nvcc is found and a GPU is visible (nvidia-smi -L); on a machine
# with nvcc but no GPU it is left out, since nothing could run it (SAE_CUDA=ON compiles it anyway,
# SAE_CUDA=OFF leaves it out; both apply when build/ is first configured).
BUILD ?= build
JOBS ?= $(shell nproc)
SAE_CUDA ?= $(shell nvidia-smi -L > /dev/null 2>&1 && echo AUTO || echo OFF)

.PHONY: all deps configure test demo bench experiments sanitize fuzz clean

all: configure
	cmake --build $(BUILD) -j $(JOBS)

deps:
	@bash scripts/install-deps.sh

configure: deps
	@test -f $(BUILD)/CMakeCache.txt || cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release -DSAE_CUDA=$(SAE_CUDA)

test: configure
	cmake --build $(BUILD) -j $(JOBS) --target sae_tests
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

demo: configure
	cmake --build $(BUILD) -j $(JOBS) --target sae_train
	$(BUILD)/bin/sae_train --profile demo --out runs/demo --overwrite

bench: all
	$(BUILD)/bin/sae_bench --benchmark_counters_tabular=true

# OMP_WAIT_POLICY=passive: idle OpenMP threads sleep instead of spinning. The quick profile's
# small steps run up to 4x slower with spinning threads when other jobs share the 2 cores, and
# about as fast without when the machine is idle (measured). Override with OMP_WAIT_POLICY=active.
OMP_WAIT_POLICY ?= passive
experiments: configure
	cmake --build $(BUILD) -j $(JOBS) --target recon_vs_f l1_sweep
	OMP_WAIT_POLICY=$(OMP_WAIT_POLICY) $(BUILD)/bin/recon_vs_f --profile quick --out runs/recon_vs_f
	OMP_WAIT_POLICY=$(OMP_WAIT_POLICY) $(BUILD)/bin/l1_sweep --profile quick --out runs/l1_sweep

SANITIZE_BUILD ?= build-sanitize
sanitize: deps
	SANITIZE_BUILD=$(SANITIZE_BUILD) JOBS=$(JOBS) bash scripts/run-sanitize.sh

FUZZ_SECONDS ?= 60
FUZZ_BUILD ?= build-fuzz
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) FUZZ_BUILD=$(FUZZ_BUILD) JOBS=$(JOBS) bash fuzz/run.sh

clean:
	rm -rf $(BUILD)
