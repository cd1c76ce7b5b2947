# sessiond - build, run, test.  `make run` and `make test` are the two commands that matter.
# Every dependency comes from pkg-config; every Debian package is installed by `make deps`.

CC       ?= cc
BUILD    := build
PKGS     := libmicrohttpd libwebsockets sqlite3 jansson libcurl libgit2 openssl
SANITIZE ?=

WARN     := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wvla -Werror
OPT      ?= -O2 -g
CFLAGS_ALL = -std=c17 -D_GNU_SOURCE -pthread $(OPT) $(WARN) -I. -I$(BUILD)/gen \
             $(shell pkg-config --cflags $(PKGS) 2>/dev/null) $(SANFLAGS) $(CFLAGS)
LDLIBS_ALL = $(shell pkg-config --libs $(PKGS) 2>/dev/null) -pthread -lm $(SANFLAGS) $(LDFLAGS)

ifeq ($(SANITIZE),1)
SANFLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
BUILD    := build/asan
else ifeq ($(SANITIZE),thread)
SANFLAGS := -fsanitize=thread -fno-omit-frame-pointer
BUILD    := build/tsan
else ifeq ($(SANITIZE),fuzz)
# The libFuzzer build (`make fuzz`, tests/fuzz/README.md): the same sources, instrumented for
# coverage, with ASan and UBSan; the harnesses link libFuzzer's main. Warnings are not errors
# here: gcc's build enforces them, and a clang-only warning must not hide a crash.
CC       := clang
SANFLAGS := -fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer \
            -fno-sanitize-recover=undefined -Wno-error
BUILD    := build/fuzz
endif

# The parts (DESIGN §2), lowest first; tools/layers.txt says which may include which and
# `make lint` checks it. Each part is one static archive, linked in layer order (highest first),
# so a program or unit test pulls only the objects it uses.
LAYERS   := common storage sandbox workspace agents runner server
common_SRC    := $(wildcard common/*.c)
storage_SRC   := $(wildcard storage/*.c)
sandbox_SRC   := $(wildcard sandbox/*.c sandbox/egress/*.c)
workspace_SRC := $(wildcard workspace/*.c workspace/snap/*.c)
agents_SRC    := $(wildcard agents/*.c)
runner_SRC    := $(wildcard runner/*.c)
server_SRC    := $(filter-out server/main.c,$(wildcard server/*.c server/api/*.c server/ws/*.c server/slack/*.c))
obj_of    = $(patsubst %.c,$(BUILD)/obj/%.o,$(1))
common_OBJ    := $(call obj_of,$(common_SRC))
storage_OBJ   := $(call obj_of,$(storage_SRC)) $(BUILD)/obj/gen/migrations.o
sandbox_OBJ   := $(call obj_of,$(sandbox_SRC))
workspace_OBJ := $(call obj_of,$(workspace_SRC))
agents_OBJ    := $(call obj_of,$(agents_SRC))
runner_OBJ    := $(call obj_of,$(runner_SRC))
server_OBJ    := $(call obj_of,$(server_SRC)) $(BUILD)/obj/gen/webfiles.o
# highest layer first: each archive's undefined symbols are found in the ones after it
LIBS     := $(foreach l,server runner agents workspace sandbox storage common,$(BUILD)/lib/$(l).a)
WEB_FILES := $(sort $(shell find web -type f ! -path 'web/extension/*' ! -name '.*' 2>/dev/null))
MIGRATIONS := $(sort $(wildcard migrations/session/*.sql migrations/registry/*.sql migrations/spool/*.sql))

UNIT_SRC := $(wildcard tests/unit/test_*.c)
UNIT_BIN := $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(UNIT_SRC))
BENCH_SRC := $(wildcard bench/*.c)
BENCH_BIN := $(patsubst bench/%.c,$(BUILD)/bench/%,$(BENCH_SRC))

.PHONY: all deps run test unit bench lint format format-check clean agents test-deps bench-rest

all: $(BUILD)/sessiond $(BUILD)/sandbox-init $(BUILD)/sessiond-git $(UNIT_BIN)

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	@echo "  CC      $<"
	@$(CC) $(CFLAGS_ALL) -MMD -MP -c $< -o $@

$(BUILD)/gen/migrations.c: $(MIGRATIONS) tools/embed_migrations.sh
	@mkdir -p $(dir $@)
	sh tools/embed_migrations.sh $(MIGRATIONS) > $@.tmp && mv $@.tmp $@

$(BUILD)/obj/gen/migrations.o: $(BUILD)/gen/migrations.c
	@mkdir -p $(dir $@)
	@$(CC) $(CFLAGS_ALL) -c $< -o $@

# The web UI (web/, not web/extension/) embedded into the binary: server/static.c serves it.
$(BUILD)/gen/webfiles.c: $(WEB_FILES) tools/embed_web.sh web
	@mkdir -p $(dir $@)
	sh tools/embed_web.sh $(WEB_FILES) > $@.tmp.$$$$ && mv $@.tmp.$$$$ $@

$(BUILD)/obj/gen/webfiles.o: $(BUILD)/gen/webfiles.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -c $< -o $@

$(BUILD)/lib/%.a:
	@mkdir -p $(dir $@)
	@rm -f $@
	@ar rcs $@ $^
$(foreach l,$(LAYERS),$(eval $(BUILD)/lib/$(l).a: $$($(l)_OBJ)))

$(BUILD)/sessiond: $(BUILD)/obj/server/main.o $(LIBS)
	$(CC) -o $@ $(BUILD)/obj/server/main.o $(LIBS) $(LDLIBS_ALL)

# The supervisor that runs inside each sandbox: no dependency of ours but libc. Never built
# with sanitizers: it runs under the sandbox's RLIMIT_DATA, and ASan's shadow reservation
# (terabytes of address space) cannot be mapped under it.
$(BUILD)/sandbox-init: sandbox/init/sandbox-init.c sandbox/init/egress_fwd.c sandbox/init/filter.c \
		sandbox/init/landlock.c
	@mkdir -p $(dir $@)
	@echo "  CC      $@"
	@$(CC) -std=c17 -D_GNU_SOURCE $(OPT) $(WARN) -o $@ $<

# The helper that runs git operations on workspaces out of the server's process, as the sandbox
# user (workspace/gitjob.h); the server finds it next to its own binary.
$(BUILD)/sessiond-git: $(BUILD)/obj/workspace/gitjob/sessiond-git.o $(LIBS)
	@echo "  LINK    $@"
	@$(CC) -o $@ $< $(LIBS) $(LDLIBS_ALL)

# A unit test links the archives of the parts it stands on (default: all, of which the linker
# takes only the objects it references). Those listed here get only their parts, so a
# dependency that creeps in (the auth test needing the runner) fails their link.
UNIT_PARTS_test_auth      := server storage common
UNIT_PARTS_test_static    := server storage sandbox common
UNIT_PARTS_test_config    := server sandbox common
UNIT_PARTS_test_secrets   := server common
UNIT_PARTS_test_ratelimit := server common
unit_libs = $(if $(UNIT_PARTS_$(1)),$(foreach l,$(UNIT_PARTS_$(1)),$(BUILD)/lib/$(l).a),$(LIBS))

$(BUILD)/tests/%: tests/unit/%.c tests/unit/testlib.h $(LIBS)
	@mkdir -p $(dir $@)
	@echo "  LINK    $@"
	@$(CC) $(CFLAGS_ALL) -o $@ $< $(call unit_libs,$*) $(LDLIBS_ALL)

$(BUILD)/bench/%: bench/%.c $(LIBS)
	@mkdir -p $(dir $@)
	@echo "  LINK    $@"
	@$(CC) $(CFLAGS_ALL) -o $@ $< $(LIBS) $(LDLIBS_ALL)

deps:
	@sh tools/deps.sh

test-deps: deps
	@sh tools/deps.sh --test

# The coding-agent CLIs, pinned by agents/bundled/package-lock.json; reinstalled only when the
# lockfile changes. The sandbox sees agents/bundled/node_modules read-only.
agents:
	@if [ ! -f agents/bundled/node_modules/.package-lock.json ] || \
	    [ agents/bundled/package-lock.json -nt agents/bundled/node_modules/.package-lock.json ]; then \
	  echo "agents: npm ci in agents/bundled"; \
	  (cd agents/bundled && npm ci --no-audit --no-fund --loglevel=error); fi

run: deps
	@$(MAKE) --no-print-directory all
	./$(BUILD)/sessiond $(ARGS)

test: test-deps agents
	@$(MAKE) --no-print-directory all
	@BUILD=$(BUILD) SANITIZE=$(SANITIZE) bash tests/run.sh $(TESTS)

unit: all
	@BUILD=$(BUILD) bash tests/run.sh unit

# The REST benchmark of issue 2 (bench/rest.sh): req/s and p50/p99, incl. an open-loop run.
bench-rest: all $(BUILD)/bench/rest
	@BUILD=$(BUILD) bash bench/rest.sh

bench: all $(BENCH_BIN)
	@BUILD=$(BUILD) bash bench/run.sh

lint:
	@sh tools/check_layers.sh
	@! grep -nE '\b(sprintf|strcpy|strcat|strtok|atoi|gets)\s*\(|\b(localtime|gmtime)\s*\(' \
		$$(git ls-files '*.c' '*.h') || (echo "lint: banned function (see CONVENTIONS.md)"; exit 1)
	@! grep -nE 'sqlite3_|<sqlite3\.h>|storage/storage_int\.h' $$(git ls-files '*.c' '*.h' | \
		grep -vE '^(storage|tests|bench)/') || \
		(echo "lint: SQL outside storage/ (DESIGN §2: call the typed functions of storage/)"; exit 1)
	@echo "lint: ok"

format:
	clang-format -i $$(git ls-files '*.c' '*.h')

format-check:
	clang-format --dry-run -Werror $$(git ls-files '*.c' '*.h')

clean:
	rm -rf build

# Durability under SIGKILL and a long soak (tests/long/; not part of `make test`).
.PHONY: crashloop soak
crashloop: all
	@CRASH_ROUNDS=$(or $(CRASH_ROUNDS),50) SESSIOND_BIN=$(CURDIR)/$(BUILD)/sessiond bash tests/long/crashloop.sh

soak: all
	@SOAK_SECONDS=$(or $(SOAK_SECONDS),600) SESSIOND_BIN=$(CURDIR)/$(BUILD)/sessiond bash tests/long/soak.sh

# Build the Dockerfile and run the image with podman, no Docker daemon needed (docs/operations.md).
# Not part of `make test`; skips with a message when podman/mmdebstrap are missing.
.PHONY: docker-check
docker-check:
	@bash tools/docker_check.sh

# ---- fuzzing: libFuzzer harnesses tests/fuzz/fuzz_<target>.c, seeds in tests/fuzz/corpus/ ----
# `make fuzz-smoke` (CI): corpus replay plus a few seconds per harness, fails on any crash.
# `make fuzz`: FUZZ_SECONDS per harness, FUZZ_JOBS harnesses at a time; logs, new corpus
# entries and crashes under build/fuzz/ (safe to run detached). FUZZ_TARGETS picks harnesses.
FUZZ_SECONDS ?= 600
FUZZ_JOBS    ?= 1
FUZZ_TARGETS ?=
FUZZ_BIN := $(patsubst tests/fuzz/%.c,$(BUILD)/%,$(wildcard tests/fuzz/fuzz_*.c))

.PHONY: fuzz fuzz-smoke fuzz-build fuzz-bins
fuzz-build:
	@sh tools/deps.sh --fuzz
	@$(MAKE) --no-print-directory SANITIZE=fuzz fuzz-bins

fuzz-bins: $(FUZZ_BIN) $(BUILD)/sandbox-init

$(BUILD)/fuzz_%: tests/fuzz/fuzz_%.c $(wildcard tests/fuzz/*.h) $(LIBS)
	@echo "  LINK    $@"
	@$(CC) $(CFLAGS_ALL) -fsanitize=fuzzer -o $@ $< $(LIBS) $(LDLIBS_ALL)

fuzz-smoke: fuzz-build
	@bash tests/fuzz/run.sh smoke $(FUZZ_TARGETS)

fuzz: fuzz-build
	@FUZZ_SECONDS=$(FUZZ_SECONDS) FUZZ_JOBS=$(FUZZ_JOBS) bash tests/fuzz/run.sh long $(FUZZ_TARGETS)

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
