# Plain C build of libmeld for C consumers, from the same sources and flags as Package.swift.
#   make                 -> build/libmeld.a, build/libmeld.so
#   make install PREFIX=/usr/local
#   make example         -> build/ties_example (against the build tree)
CC ?= clang
ifeq ($(origin CC),default)
CC := clang
endif
PREFIX ?= /usr/local
VERSION := $(shell sed -n 's/^\#define MELD_VERSION_\(MAJOR\|MINOR\|PATCH\) \([0-9]*\)/\2/p' include/meld/meld_base.h | paste -sd.)
CFLAGS ?= -O3 -DNDEBUG
# what every build of the library needs (the sanitized one below too): OpenMP, unfused
# arithmetic as written (bit-identical paths), the public headers
LIB_CFLAGS := -std=gnu2x -fopenmp -ffp-contract=off -fno-math-errno -Wall -Iinclude
CFLAGS += $(LIB_CFLAGS) -fPIC -fvisibility=hidden
LDLIBS := -lomp5 -lOpenCL -lm
SRC := $(shell find CKernels -name '*.c' -not -path 'CKernels/opencl/*')
OBJ := $(patsubst %.c,build/obj/%.o,$(SRC))
DEPS := $(shell find CKernels include -name '*.h' -o -name '*.tpl.h' -o -name '*.cl')

all: build/libmeld.a build/libmeld.so

build/obj/%.o: %.c $(DEPS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

build/libmeld.a: $(OBJ)
	@rm -f $@ # a fresh archive: members of renamed or removed sources must not linger
	ar rcs $@ $^

build/libmeld.so: $(OBJ)
	$(CC) -shared -o $@ $^ -Wl,-soname,libmeld.so.0 $(LDLIBS)

build/meld.pc: meld.pc.in
	@mkdir -p build
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@VERSION@|$(VERSION)|g' $< > $@

install: all build/meld.pc
	install -d $(DESTDIR)$(PREFIX)/include/meld $(DESTDIR)$(PREFIX)/lib/pkgconfig
	install -m 644 include/meld.h $(DESTDIR)$(PREFIX)/include/
	install -m 644 include/meld/*.h $(DESTDIR)$(PREFIX)/include/meld/
	install -m 644 build/libmeld.a $(DESTDIR)$(PREFIX)/lib/
	install -m 755 build/libmeld.so $(DESTDIR)$(PREFIX)/lib/libmeld.so.$(VERSION)
	ln -sf libmeld.so.$(VERSION) $(DESTDIR)$(PREFIX)/lib/libmeld.so.0
	ln -sf libmeld.so.0 $(DESTDIR)$(PREFIX)/lib/libmeld.so
	install -m 644 build/meld.pc $(DESTDIR)$(PREFIX)/lib/pkgconfig/

example: build/libmeld.a
	$(CC) -O2 -Iinclude examples/ties_example.c build/libmeld.a $(LDLIBS) -o build/ties_example

clean:
	rm -rf build

.PHONY: all install example clean

BENCH_SRC := $(wildcard Benchmarks/meld-bench/*.c)
BENCH_OBJ := $(patsubst %.c,build/obj/%.o,$(BENCH_SRC))
build/obj/Benchmarks/%.o: Benchmarks/%.c Benchmarks/meld-bench/bench_util.h include/meld.h
	@mkdir -p $(dir $@)
	$(CC) -O3 -std=gnu2x -fopenmp -Wall -Iinclude -c $< -o $@
# link without -fopenmp: clang would add -lomp, which Debian names libomp5
build/meld-bench: $(BENCH_OBJ) build/libmeld.a
	$(CC) $(BENCH_OBJ) build/libmeld.a -lopenblas $(LDLIBS) -o $@
bench: build/meld-bench
.PHONY: bench

# The C API fuzzer (Tests/fuzz/api_fuzz.c) against a copy of the library built with
# AddressSanitizer and UBSan: a read or write past a caller's buffer, or undefined behaviour, is
# a report. `make fuzz` builds and runs it (CI does); build/api-fuzz ITERATIONS SEED by hand.
SAN_FLAGS := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
SAN_OBJ := $(patsubst %.c,build/san/%.o,$(SRC))
build/san/%.o: %.c $(DEPS)
	@mkdir -p $(dir $@)
	$(CC) $(LIB_CFLAGS) $(SAN_FLAGS) -c $< -o $@
build/san/api_fuzz.o: Tests/fuzz/api_fuzz.c include/meld.h $(DEPS)
	@mkdir -p $(dir $@)
	$(CC) -std=gnu2x -Wall -Iinclude $(SAN_FLAGS) -c $< -o $@
# linked without -fopenmp: clang would add -lomp, which Debian names libomp5
build/api-fuzz: build/san/api_fuzz.o $(SAN_OBJ)
	$(CC) $(SAN_FLAGS) $^ $(LDLIBS) -o $@
# (leak checking on: a plan, packed weights or scratch the library loses is a report too)
fuzz: build/api-fuzz
	for seed in $${FUZZ_SEEDS:-1 2 3}; do \
	    UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 ASAN_OPTIONS=detect_leaks=1 build/api-fuzz $${FUZZ_ITERATIONS:-20000} $$seed || exit 1; \
	done
.PHONY: fuzz
