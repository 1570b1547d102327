# Front door. The real build is CMakeLists.txt; everything lands in build/ (binaries in build/bin/).
#   make        install missing system packages, configure and build everything
#   make test   build, then run every test through CTest
#   make demo   build, then train an SAE on the built-in synthetic data (CPU or GPU when present)
#   make bench  build, then run the benchmarks (results to read into bench/RESULTS.md)
#   make experiments  build, then run both studies with --profile quick (a few minutes on 2 CPU
#               cores; runs/recon_vs_f, runs/l1_sweep; see README "Results"; finished runs are skipped)
#   make sanitize  every test built with AddressSanitizer + UndefinedBehaviorSanitizer (clang, CUDA off)
#               into build-sanitize/, run through CTest; any sanitizer report fails (docs/fuzzing.md)
#   make fuzz   build the libFuzzer harnesses (clang, build-fuzz/), run the regression inputs, then
#               fuzz each format for FUZZ_SECONDS (default 60) seconds (docs/fuzzing.md)
BUILD ?= build
JOBS ?= $(shell nproc)

.PHONY: all deps configure test demo bench experiments sanitize fuzz clean

all: configure
	cmake --build $(BUILD) -j $(JOBS)

deps:
	@bash scripts/install-deps.sh

configure: deps
	@test -f $(BUILD)/CMakeCache.txt || cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release

test: all
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

demo: all
	$(BUILD)/bin/sae_train --profile demo --out runs/demo --overwrite

bench: all
	$(BUILD)/bin/sae_bench --benchmark_counters_tabular=true

# OMP_WAIT_POLICY=passive: idle OpenMP threads sleep instead of spinning. The quick profile's
# small steps run up to 4x slower with spinning threads when other jobs share the 2 cores, and
# about as fast without when the machine is idle (measured). Override with OMP_WAIT_POLICY=active.
OMP_WAIT_POLICY ?= passive
experiments: all
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
