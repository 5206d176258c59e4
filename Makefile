# vmferry build.  `make` builds everything; `make check` runs the whole suite
# (unit + integration, then again under ASan/UBSan and under TSan); `make
# demo` runs the main job.  BUILD=dir selects a build tree; SAN=1 builds with
# ASan/UBSan into build-san, TSAN=1 with ThreadSanitizer into build-tsan.

CC      ?= cc
SAN     ?= 0
TSAN    ?= 0
WERROR  ?= 0
ifeq ($(SAN)$(TSAN),11)
$(error SAN=1 and TSAN=1 cannot be combined: ASan and TSan exclude each other)
endif
ifeq ($(SAN),1)
BUILD   ?= build-san
SANFLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
else ifeq ($(TSAN),1)
BUILD   ?= build-tsan
SANFLAGS := -fsanitize=thread -fno-omit-frame-pointer
else
BUILD   ?= build
SANFLAGS :=
endif

WARN    := -Wall -Wextra -Wshadow -Wvla -Wmissing-prototypes -Wstrict-prototypes \
           -Wformat=2 -Wno-format-nonliteral -Wundef
ifeq ($(WERROR),1)
WARN    += -Werror
endif
CFLAGS  ?= -O2 -g
ALLCFLAGS := -std=gnu11 $(CFLAGS) $(WARN) $(SANFLAGS) -D_GNU_SOURCE -Iinclude -Isrc -MMD -MP
LDLIBS  := -ljson-c -luring -lpthread -lm

# ---- guest (freestanding) ----
GUEST_CFLAGS := -std=gnu11 -O2 -g -ffreestanding -fno-builtin -nostdlib -nostdinc \
  -isystem $(shell $(CC) -print-file-name=include) \
  -fno-pic -fno-pie -mno-red-zone -mcmodel=small -fno-stack-protector \
  -fno-asynchronous-unwind-tables -mno-sse -mno-mmx -mno-avx -mgeneral-regs-only \
  -Iinclude -Iguest/sdk $(WARN) -Wno-missing-prototypes -MMD -MP
GUEST_LDFLAGS := -nostdlib -static -no-pie -Wl,-T,guest/sdk/guest.ld -Wl,--build-id=none \
  -Wl,--no-warn-rwx-segments # one segment: guests map everything RWX anyway (no NX)
GUEST_SDK_SRC := $(wildcard guest/sdk/*.c) $(wildcard guest/sdk/*.S)
GUEST_SDK_OBJ := $(patsubst %,$(BUILD)/%.o,$(GUEST_SDK_SRC))
GUEST_NAMES   := $(sort $(basename $(notdir $(wildcard guest/workloads/*.c))))
GUEST_ELFS    := $(patsubst %,$(BUILD)/guest/%.elf,$(GUEST_NAMES))

# ---- VMM ----
LIB_SRC  := $(filter-out src/main.c,$(shell find src -name '*.c' | sort))
LIB_OBJ  := $(patsubst %,$(BUILD)/%.o,$(LIB_SRC))
LIB      := $(BUILD)/libvmferry.a
BIN      := $(BUILD)/vmferry

UNIT_SRC := $(sort $(wildcard tests/unit/test_*.c))
INT_SRC  := $(sort $(wildcard tests/integration/test_*.c))
# The VMM harness the tests and the benchmarks share.
HARNESS_SRC := $(sort $(wildcard harness/*.c))
HARNESS_OBJ := $(patsubst %,$(BUILD)/%.o,$(HARNESS_SRC))
HARNESS     := $(BUILD)/libharness.a
TLIB_SRC := $(sort $(wildcard tests/lib/*.c))
TLIB_OBJ := $(patsubst %,$(BUILD)/%.o,$(TLIB_SRC))
UNIT_BIN := $(patsubst tests/%.c,$(BUILD)/tests/%,$(UNIT_SRC))
INT_BIN  := $(patsubst tests/%.c,$(BUILD)/tests/%,$(INT_SRC))
# bench/*.c are programs, but for the benchmarks' library.
BENCH_LIB_SRC := bench/bench.c bench/link.c bench/wire.c
BENCH_LIB_OBJ := $(patsubst %,$(BUILD)/%.o,$(BENCH_LIB_SRC))
BENCH_LIB     := $(BUILD)/libbench.a
BENCH_SRC:= $(filter-out $(BENCH_LIB_SRC),$(sort $(wildcard bench/*.c)))
BENCH_BIN:= $(patsubst bench/%.c,$(BUILD)/bench/%,$(BENCH_SRC))
# The chaos campaign (tests/chaos): an engine the CI test and the long run share.
CHAOS_LIB_SRC := tests/chaos/chaos.c tests/chaos/chaos_verdict.c
CHAOS_LIB_OBJ := $(patsubst %,$(BUILD)/%.o,$(CHAOS_LIB_SRC))
CHAOS_BIN     := $(BUILD)/tests/chaos/chaos
TOOL_SRC := $(sort $(wildcard tools/*.c))
TOOL_BIN := $(patsubst tools/%.c,$(BUILD)/tools/%,$(TOOL_SRC))

.PHONY: all check demo bench fuzz fuzz-long clean setup tests chaos test-build
all: $(BIN) $(GUEST_ELFS) tests $(BENCH_BIN) $(TOOL_BIN)
# What the test suite runs (the sanitizer passes of make check): no benchmarks.
test-build: $(BIN) $(GUEST_ELFS) tests $(TOOL_BIN)
tests: $(UNIT_BIN) $(INT_BIN) $(CHAOS_BIN)

$(BUILD)/guest/%.S.o: guest/%.S
	@mkdir -p $(dir $@)
	$(CC) $(GUEST_CFLAGS) -c $< -o $@
$(BUILD)/guest/%.c.o: guest/%.c
	@mkdir -p $(dir $@)
	$(CC) $(GUEST_CFLAGS) -c $< -o $@
$(BUILD)/guest/%.elf: $(BUILD)/guest/workloads/%.c.o $(GUEST_SDK_OBJ) guest/sdk/guest.ld
	$(CC) $(GUEST_CFLAGS) $(GUEST_LDFLAGS) -o $@ $(GUEST_SDK_OBJ) $<

# The built-in guests are linked into the vmferry binary (--guest NAME).
$(BUILD)/gen/guest_blobs.S: $(GUEST_ELFS) Makefile
	@mkdir -p $(dir $@)
	@{ echo '.section .rodata'; \
	   for n in $(GUEST_NAMES); do \
	     echo ".global vmf_blob_$${n}_start"; echo ".global vmf_blob_$${n}_end"; \
	     echo ".balign 16"; echo "vmf_blob_$${n}_start:"; \
	     echo ".incbin \"$(BUILD)/guest/$${n}.elf\""; echo "vmf_blob_$${n}_end:"; \
	   done; \
	   echo '.section .note.GNU-stack,"",@progbits'; } > $@
$(BUILD)/gen/guest_blobs_table.c: Makefile $(GUEST_ELFS)
	@mkdir -p $(dir $@)
	@{ echo '#include "vmm/guest_image.h"'; \
	   for n in $(GUEST_NAMES); do \
	     echo "extern const unsigned char vmf_blob_$${n}_start[], vmf_blob_$${n}_end[];"; done; \
	   echo 'const struct guest_builtin guest_builtins[] = {'; \
	   for n in $(GUEST_NAMES); do \
	     echo "  { \"$${n}\", vmf_blob_$${n}_start, vmf_blob_$${n}_end },"; done; \
	   echo '  { 0, 0, 0 } };'; } > $@
$(BUILD)/gen/%.S.o: $(BUILD)/gen/%.S
	$(CC) -c $< -o $@
$(BUILD)/gen/%.c.o: $(BUILD)/gen/%.c
	$(CC) $(ALLCFLAGS) -Wno-missing-prototypes -c $< -o $@
GEN_OBJ := $(BUILD)/gen/guest_blobs.S.o $(BUILD)/gen/guest_blobs_table.c.o

$(BUILD)/src/%.c.o: src/%.c
	@mkdir -p $(dir $@)
	$(CC) $(ALLCFLAGS) -c $< -o $@
$(BUILD)/tests/%.c.o: tests/%.c
	@mkdir -p $(dir $@)
	$(CC) $(ALLCFLAGS) -I. -Itests -c $< -o $@
$(BUILD)/harness/%.c.o: harness/%.c
	@mkdir -p $(dir $@)
	$(CC) $(ALLCFLAGS) -I. -c $< -o $@
$(BUILD)/bench/%.c.o: bench/%.c
	@mkdir -p $(dir $@)
	$(CC) $(ALLCFLAGS) -I. -c $< -o $@
$(BUILD)/tools/%.c.o: tools/%.c
	@mkdir -p $(dir $@)
	$(CC) $(ALLCFLAGS) -c $< -o $@

$(LIB): $(LIB_OBJ) $(GEN_OBJ)
	@rm -f $@
	ar rcs $@ $^
$(BENCH_LIB): $(BENCH_LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^
$(HARNESS): $(HARNESS_OBJ)
	@rm -f $@
	ar rcs $@ $^
$(BIN): $(BUILD)/src/main.c.o $(LIB)
	$(CC) $(ALLCFLAGS) -o $@ $^ $(LDLIBS)
$(BUILD)/tests/unit/%: $(BUILD)/tests/unit/%.c.o $(TLIB_OBJ) $(HARNESS) $(LIB)
	$(CC) $(ALLCFLAGS) -o $@ $^ $(LDLIBS) -lcmocka
$(BUILD)/tests/integration/%: $(BUILD)/tests/integration/%.c.o $(TLIB_OBJ) $(HARNESS) $(LIB)
	$(CC) $(ALLCFLAGS) -o $@ $^ $(LDLIBS) -lcmocka
$(BUILD)/tests/integration/test_chaos: $(BUILD)/tests/integration/test_chaos.c.o $(CHAOS_LIB_OBJ) $(TLIB_OBJ) $(HARNESS) $(LIB)
	$(CC) $(ALLCFLAGS) -o $@ $^ $(LDLIBS) -lcmocka
$(CHAOS_BIN): $(BUILD)/tests/chaos/main.c.o $(CHAOS_LIB_OBJ) $(HARNESS) $(LIB)
	$(CC) $(ALLCFLAGS) -o $@ $^ $(LDLIBS)
# The unit test of bench/wire.c's scheduling core.
$(BUILD)/tests/unit/test_wire: $(BENCH_LIB)
$(BUILD)/bench/%: $(BUILD)/bench/%.c.o $(BENCH_LIB) $(HARNESS) $(LIB)
	$(CC) $(ALLCFLAGS) -o $@ $^ $(LDLIBS)
$(BUILD)/tools/%: $(BUILD)/tools/%.c.o $(LIB)
	$(CC) $(ALLCFLAGS) -o $@ $^ $(LDLIBS)

# Fuzz targets (clang libFuzzer): fuzz/fuzz_NAME.c -> build-fuzz/fuzz_NAME
FUZZ_SRC := $(sort $(wildcard fuzz/fuzz_*.c))
FUZZ_BIN := $(patsubst fuzz/%.c,build-fuzz/%,$(FUZZ_SRC))
FUZZ_LIB_SRC := $(filter-out src/main.c,$(LIB_SRC))
# The library is compiled once (coverage-instrumented, fuzzer-no-link) and
# linked into every target.  vmstate.c's KVM structs with a trailing array
# inside a struct are the KVM API's idiom: clang's note about it is off.
FUZZ_CFLAGS := -std=gnu11 -g -O1 -fsanitize=address,undefined -fno-sanitize-recover=undefined \
	-D_GNU_SOURCE -Iinclude -Isrc -Wno-gnu-variable-sized-type-not-at-end
FUZZ_OBJ := $(patsubst %.c,build-fuzz/obj/%.o,$(FUZZ_LIB_SRC)) \
	build-fuzz/obj/guest_blobs.o build-fuzz/obj/guest_blobs_table.o
fuzz: $(FUZZ_BIN)
build-fuzz/obj/%.o: %.c
	@mkdir -p $(dir $@)
	clang $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -MMD -MP -c -o $@ $<
build-fuzz/obj/guest_blobs.o: build/gen/guest_blobs.S
	@mkdir -p $(dir $@)
	clang -c -o $@ $<
build-fuzz/obj/guest_blobs_table.o: build/gen/guest_blobs_table.c
	@mkdir -p $(dir $@)
	clang $(FUZZ_CFLAGS) -c -o $@ $<
build-fuzz/%: fuzz/%.c $(FUZZ_OBJ)
	clang $(FUZZ_CFLAGS) -fsanitize=fuzzer -o $@ $< $(FUZZ_OBJ) $(LDLIBS)
-include $(patsubst %.o,%.d,$(filter build-fuzz/obj/src/%,$(FUZZ_OBJ)))

# The long campaign, not part of CI: FUZZ_RUNS (10 M) or FUZZ_TIME seconds per
# target, FUZZ_TARGETS to pick; keeps the merged corpus in fuzz/corpus/NAME.
fuzz-long:
	@scripts/fuzz-long.sh

setup:
	@scripts/setup.sh

# The long chaos campaign, not part of CI: CHAOS_RUNS (200) migrations with
# one random fault each, CHAOS_SEED to repeat one (scripts/chaos.sh).
chaos: $(BIN) $(CHAOS_BIN)
	@scripts/chaos.sh --runs $(or $(CHAOS_RUNS),200) $(if $(CHAOS_SEED),--seed $(CHAOS_SEED))

check:
	@scripts/setup.sh
	@scripts/check.sh

demo:
	@scripts/setup.sh
	@scripts/demo.sh

bench: all
	@scripts/bench.sh

clean:
	rm -rf build build-san build-tsan build-fuzz

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
