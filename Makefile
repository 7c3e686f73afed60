# moet — build, test, demo.  `make` builds ./moet; `make test` builds and runs every test.
CC      ?= gcc
BUILD   ?= build
ARCH    ?= -march=native
OPT     ?= -O3
SAN     ?=
PKGS    := hdf5 yaml-0.1 libcjson openblas libpcre2-8 libutf8proc
CFLAGS  += -std=c11 $(OPT) $(ARCH) -fno-math-errno -fopenmp -g -Wall -Wextra -Wno-unused-parameter \
           -Werror=implicit-function-declaration -D_GNU_SOURCE -I. $(SAN) \
           $(shell pkg-config --cflags $(PKGS) 2>/dev/null) \
           $(shell pkg-config --cflags ompi-c 2>/dev/null)
# OpenMPI: only its header; libmpi.so.40 is dlopened under a launcher (dist/mpi.h), never linked.
# Link the OpenMP build of OpenBLAS so its threads and ours are one pool (no oversubscription).
# RUNPATH, so LD_LIBRARY_PATH=.../openblas-pthread still swaps it in for measurements.
BLASDIR ?= /usr/lib/x86_64-linux-gnu/openblas-openmp
LDFLAGS += -fopenmp $(SAN) -Wl,--enable-new-dtags -Wl,-rpath,$(BLASDIR)
LDLIBS  += $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lm -lpthread

# Building against headers that are not there (or another package's cblas.h) makes objects
# that look fine and crash later: check the libraries first, except for the goals that
# install them (test, demo and deps run tools/deps.sh before building).
NEED_PKGS := $(PKGS) ompi-c $(if $(filter test-run asan,$(MAKECMDGOALS)),cmocka)
ifneq ($(filter-out test deps demo demo-lora clean,$(or $(MAKECMDGOALS),all)),)
  MISSING := $(shell for p in $(NEED_PKGS); do pkg-config --exists $$p 2>/dev/null || printf '%s ' $$p; done)
  ifneq ($(filter fuzz fuzz-build,$(MAKECMDGOALS)),)
    MISSING += $(shell command -v clang >/dev/null || echo clang)
    MISSING += $(shell test -e /usr/lib/llvm-14/lib/libomp.so || ls /usr/lib/llvm-*/lib/libomp.so >/dev/null 2>&1 || echo libomp-dev)
  endif
  ifneq ($(strip $(MISSING)),)
    $(error missing libraries ($(strip $(MISSING)) not found by pkg-config): run tools/deps.sh (or make test))
  endif
endif

# Every object depends on the flags it was built with: $(BUILD)/flags holds them and is
# rewritten only when they change (other CFLAGS, SAN, include paths of the libraries), so a
# change rebuilds everything instead of linking stale objects.
FLAGS_NOW := $(strip $(CC) $(CFLAGS) | $(LDFLAGS) | $(LDLIBS))
ifneq ($(FLAGS_NOW),$(strip $(file <$(BUILD)/flags)))
  $(shell mkdir -p $(BUILD))
  $(file >$(BUILD)/flags,$(FLAGS_NOW))
endif

LIB_SRC  := $(wildcard common/*.c model/*.c optim/*.c data/*.c checkpoints/*.c dist/*.c) \
            $(filter-out train/main.c,$(wildcard train/*.c))
LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/%.o)
TEST_SRC := $(wildcard tests/test_*.c)
TEST_BIN := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)

.PHONY: all test test-run asan fuzz fuzz-build deps demo demo-lora bench bench-dist bench-big clean
all: moet

moet: $(BUILD)/moet
	@ln -sf $(BUILD)/moet moet

$(BUILD)/moet: $(BUILD)/train/main.o $(BUILD)/libmoet.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/libmoet.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/%.o: %.c $(BUILD)/flags
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c -o $@ $<

# moet's own kernels are built for their ISA whatever ARCH says (model/kern.c picks a set at
# run time): GCC takes the files' #pragma GCC target, clang (make fuzz) needs the flags
$(BUILD)/model/kern_avx2.o: CFLAGS += -mavx2 -mfma -mf16c
$(BUILD)/model/kern_avx512.o: CFLAGS += -mavx512f -mavx512bw -mavx512dq -mavx512vl -mfma -mf16c

$(BUILD)/tests/%: tests/%.c $(BUILD)/libmoet.a $(BUILD)/flags
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libmoet.a $(LDLIBS) -lcmocka

-include $(LIB_OBJ:.o=.d) $(BUILD)/train/main.d

# Installs missing Debian packages (tools/deps.sh, quick when all are there), then runs
# every C test binary and every script test (tests/t_*.sh) against ./moet.
test:
	@tools/deps.sh
	@$(MAKE) --no-print-directory test-run

test-run: moet $(TEST_BIN) $(BUILD)/step_ceiling
	@MOET_BUILD=$(BUILD) tests/run.sh $(TEST_BIN)

# The same C tests under AddressSanitizer + UBSan in their own build dir; undefined behaviour
# stops the test (UBSan only prints by default, and a printed report would pass).
asan:
	$(MAKE) BUILD=build-asan OPT=-O1 SAN="-fsanitize=address,undefined -fno-omit-frame-pointer" \
	        build-asan/moet $(TEST_SRC:tests/%.c=build-asan/tests/%)
	@MOET_BIN=build-asan/moet MOET_BUILD=build-asan ASAN_OPTIONS=detect_leaks=0 \
	  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	  tests/run.sh --asan $(TEST_SRC:tests/%.c=build-asan/tests/%)

# Fuzzing (tests/fuzz/README.md): one libFuzzer target per parser, built with Debian's clang,
# ASan + UBSan, in build-fuzz/; `make fuzz` runs each for FUZZ_SECONDS (CI: 10) on a corpus
# that grows in build-fuzz/corpus/ from the seeds in tests/fuzz/corpus/.
FUZZ_TARGETS := $(patsubst tests/fuzz/fuzz_%.c,%,$(wildcard tests/fuzz/fuzz_*.c))
FUZZ_SECONDS ?= 60
FUZZ_SAN := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer

$(BUILD)/fuzz/%: tests/fuzz/fuzz_%.c tests/fuzz/fuzz.h $(BUILD)/libmoet.a $(BUILD)/flags
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -fsanitize=fuzzer $(LDFLAGS) -o $@ $< $(BUILD)/libmoet.a $(LDLIBS)

fuzz-build:
	$(MAKE) CC=clang BUILD=build-fuzz OPT="-O1 -gline-tables-only" ARCH= \
	        SAN="$(FUZZ_SAN) -fsanitize=fuzzer-no-link -Wno-pass-failed" BLASDIR=/usr/lib/x86_64-linux-gnu/openblas-pthread \
	        $(FUZZ_TARGETS:%=build-fuzz/fuzz/%)

fuzz: fuzz-build
	@tests/fuzz/run.sh $(FUZZ_SECONDS) $(FUZZ_TARGETS)

demo:
	tools/demo.sh

demo-lora:
	tools/demo_lora.sh

bench: moet
	tests/bench/bench.sh
	tests/bench/dist_bench.sh

# GEMM libraries against moet's kernels on moet's shapes (make bench runs it); each library
# only where its Debian package is installed (libxsmm-dev, libblis-dev, libdnnl-dev)
GEMM_BENCH_LIBS = $(if $(wildcard /usr/include/libxsmm.h),-DHAVE_XSMM -lxsmm -ldl) \
                  $(if $(wildcard /usr/include/x86_64-linux-gnu/blis.h),-DHAVE_BLIS -lblis) \
                  $(if $(wildcard /usr/include/oneapi/dnnl/dnnl.h),-DHAVE_DNNL -ldnnl)
$(BUILD)/gemm_bench: tests/bench/gemm_bench.c $(BUILD)/libmoet.a $(BUILD)/flags
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libmoet.a $(LDLIBS) $(GEMM_BENCH_LIBS) # OpenBLAS's cblas_sgemm first

# every product of a full fine-tuning step alone at OpenBLAS's rate, arranged as moet runs
# them, plus the AdamW pass: the ceiling make bench sets issue 16's MFU targets against
$(BUILD)/step_ceiling: tests/bench/step_ceiling.c $(BUILD)/libmoet.a $(BUILD)/flags
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libmoet.a $(LDLIBS)

# the data-parallel part alone: 2 MPI ranks x 1 thread vs 1 process x 2 threads
bench-dist: moet
	tests/bench/dist_bench.sh

# LoRA on a 2-layer slice of the real Mixtral-8x7B (6.3 GB bf16, written once into
# build/bigslice, or BIG_DIR): bf16 base as stored vs widened to fp32; BIG_FAMILY=qwen3_moe
# for the Qwen3-30B-A3B shapes.
bench-big: moet
	tests/bench/bench_big.sh

deps:
	tools/deps.sh

clean:
	rm -rf build build-asan build-fuzz moet
