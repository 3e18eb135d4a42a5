# holdfast — quick start: `make demo`, then `make test`.
# Every target installs missing Debian packages first (deps/debian-packages.txt), so both work on a
# fresh Debian 12 machine.

BUILD      ?= build
JOBS       ?= $(shell nproc)
CMAKE_ARGS ?=
SUDO       := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all deps build test test-long demo sanitize tsan tidy check bench install clean

all: build

deps:
	@missing=$$(grep -v '^\s*#' deps/debian-packages.txt | grep -v '^\s*$$' | while read -r p; do \
	    dpkg-query -W -f='$${Status}\n' "$$p" 2>/dev/null | grep -q 'install ok installed' || echo "$$p"; done); \
	if [ -n "$$missing" ]; then \
	    echo "installing missing Debian packages:" $$missing; \
	    $(SUDO) apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(BUILD)/CMakeCache.txt: | deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo $(CMAKE_ARGS)

build: deps $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) -j $(JOBS)

# Every test: unit, multi-process races, fault injection (FUSE tests skip where /dev/fuse is absent).
test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS) --timeout 600

# Long soaks and fuzzing, kept out of the default run.
test-long: build
	cd $(BUILD) && HOLDFAST_SOAK=1 ctest --output-on-failure --timeout 5400

demo: build
	@HOLDFAST=$(abspath $(BUILD))/holdfast bash demo/run

sanitize: deps
	$(MAKE) test BUILD=build-asan CMAKE_ARGS="-DHOLDFAST_SANITIZE=address,undefined -DHOLDFAST_BUILD_BENCH=OFF -DCMAKE_BUILD_TYPE=Debug"

tsan: deps
	$(MAKE) test BUILD=build-tsan CMAKE_ARGS="-DHOLDFAST_SANITIZE=thread -DHOLDFAST_BUILD_BENCH=OFF -DCMAKE_BUILD_TYPE=Debug"

# clang-tidy with .clang-tidy's checks over the library and the command; any finding fails.
tidy: build
	run-clang-tidy -quiet -j $(JOBS) -p $(BUILD) '$(abspath .)/(src|cli)/.*\.cpp$$' > $(BUILD)/tidy.log 2>&1; \
	  status=$$?; grep -E 'warning:|error:' $(BUILD)/tidy.log | sort -u; \
	  if [ $$status -ne 0 ] || grep -qE 'warning:|error:' $(BUILD)/tidy.log; then echo "clang-tidy: findings above"; exit 1; fi; \
	  echo "clang-tidy: clean"

# Everything CI can afford beyond `make test`: sanitizers and clang-tidy.
check: test sanitize tsan tidy

bench: build
	bash bench/run

install: build
	cmake --install $(BUILD)

clean:
	rm -rf build build-asan build-tsan
