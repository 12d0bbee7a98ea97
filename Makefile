# dhsm - automation for Azure Dedicated HSM (Thales Luna Network HSM 7).
#
#   make            build ./dhsm (and the simulated client's PKCS#11 library, build/sim/)
#   make deps       install the Debian packages the build, tests and simulator need
#   make test       build and run every test; last line "N passed, N failed"
#   make check      the same under AddressSanitizer + UndefinedBehaviorSanitizer
#   make demo       the main job against the simulated estate
#   make fuzz       every parser fuzzed, FUZZ_SECONDS=60 per driver (tests/fuzz)
#   make races      the login guard's full race matrix (N = 3, 5, 10; make test runs N = 3)
#   make kills      the initialize kill matrix in full (6 kill points; make test runs 3)
#   make man        docs/dhsm.1 from docs/cli.md (tools/man.lua)
#   make install    PREFIX=/usr/local: the binary and its man page

PREFIX  ?= /usr/local
CC      ?= cc
PKG     ?= pkg-config
O       ?= build
BIN     ?= dhsm
LUAC    ?= luac5.4
LUA     ?= lua5.4

PKGS    := lua5.4 libcurl libssh2 openssl libedit p11-kit-1
PKG_OK  := $(shell $(PKG) --exists $(PKGS) lua5.4-cjson 2>/dev/null && echo yes)
ifneq ($(PKG_OK),yes)
  ifeq ($(filter deps clean,$(MAKECMDGOALS)),)
    $(warning some libraries are missing ($(PKGS) lua5.4-cjson): run 'make deps')
  endif
endif

OPT       ?= -O2 -g
WARN      := -Wall -Wextra -Werror
# A native module sees include/ (the whole contract) and its own folder,
# never runtime/: its objects are built without -Iruntime.
CFLAGS_MOD = -std=c11 -D_GNU_SOURCE $(OPT) $(WARN) $(SAN) -Iinclude \
             $(shell $(PKG) --cflags $(PKGS) lua5.4-cjson 2>/dev/null) $(CFLAGS)
CFLAGS_ALL = $(CFLAGS_MOD) -Iruntime -I$(O)
# cjson is linked statically so one file deploys; everything else as Debian ships it.
LIBS       = -Wl,-Bstatic -l:liblua5.4-cjson.a -Wl,-Bdynamic \
             $(shell $(PKG) --libs $(PKGS) 2>/dev/null) -ldl -lm
LDFLAGS_ALL = $(SAN) $(LDFLAGS)

RUNTIME_SRC := $(filter-out runtime/main.c,$(wildcard runtime/*.c))
MODULE_SRC  := $(wildcard modules/*/*.c)
LIB_OBJ     := $(patsubst %.c,$(O)/%.o,$(RUNTIME_SRC) $(MODULE_SRC)) $(O)/embedded.o
LUA_FILES   := $(sort $(wildcard runtime/lua/dhsm/*.lua runtime/lua/dhsm/*/*.lua modules/*/*.lua playbooks/*.lua))
DATA_FILES  := $(sort $(wildcard playbooks/templates/* modules/*/*.tsv))
UNIT_SRC    := $(wildcard tests/unit/*_test.c)
UNIT_BIN    := $(patsubst tests/unit/%.c,$(O)/tests/%,$(UNIT_SRC))
# The simulated estate's Luna client library (tests/sim/lunaclient/cryptoki): SoftHSM2 plus
# the HA groups' virtual slots, its partition logins counted by the appliances through
# tests/sim/lunaclient/report_login.py (its path built in). The estate looks for it in
# build/sim/ (or $DHSM_SIM_CRYPTOKI).
SIM_CRYPTOKI := $(O)/sim/libcryptoki-sim.so

.DELETE_ON_ERROR:
.PHONY: all deps test check demo install clean unit lua-syntax bench fuzz man races kills
all: $(BIN) $(SIM_CRYPTOKI)

$(BIN): $(LIB_OBJ) $(O)/runtime/main.o
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(LIBS)

$(O)/%.o: %.c $(wildcard include/dhsm/*.h runtime/*.h) | $(O)/.dirs
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -c -o $@ $<

$(O)/modules/%.o: modules/%.c $(wildcard include/dhsm/*.h modules/*/*.h) | $(O)/.dirs
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_MOD) -c -o $@ $<

$(O)/embedded.o: $(O)/embedded.c
	$(CC) $(CFLAGS_ALL) -c -o $@ $<

$(O)/.dirs:
	@mkdir -p $(O)/runtime $(O)/tests $(O)/tools && touch $@

# The Lua half is syntax-checked, then compiled in.
$(O)/tools/embedlua: tools/embedlua.c | $(O)/.dirs
	$(CC) -std=c11 -O1 $(WARN) -o $@ $<

$(O)/embedded.c: $(O)/tools/embedlua $(LUA_FILES) $(DATA_FILES)
	@for f in $(LUA_FILES); do $(LUAC) -p $$f || exit 1; done  # one by one: 5.4.4's luac -p frees twice with several
	$(O)/tools/embedlua $@ $(LUA_FILES) $(DATA_FILES)

# Not sanitized (a preloaded runtime would be needed by every program loading it): no $(SAN).
$(SIM_CRYPTOKI): tests/sim/lunaclient/cryptoki/cryptoki.c | $(O)/.dirs
	@mkdir -p $(dir $@)
	$(CC) -std=c11 $(OPT) $(WARN) -fPIC -shared -fvisibility=hidden $(shell $(PKG) --cflags p11-kit-1) \
	  -DSIM_REPORTER='"$(CURDIR)/tests/sim/lunaclient/report_login.py"' -o $@ $< -ldl -lpthread

$(O)/tests/%: tests/unit/%.c $(LIB_OBJ) | $(O)/.dirs
	$(CC) $(CFLAGS_ALL) $(LDFLAGS_ALL) -o $@ $< $(LIB_OBJ) $(LIBS) -lcmocka

deps:
	@sh tools/deps.sh

unit: $(UNIT_BIN)

test: deps
	@$(MAKE) --no-print-directory all unit
	@sh tests/run.sh ./$(BIN) $(UNIT_BIN)

# The clang build, which must be as warning-free as gcc's; then the same
# tests under the sanitizers, in their own build folder and binary.
check: deps
	@if command -v clang >/dev/null; then \
	  $(MAKE) --no-print-directory -s O=build-clang BIN=build-clang/dhsm CC=clang build-clang/dhsm \
	    build-clang/sim/libcryptoki-sim.so && echo "clang: build clean with -Wall -Wextra -Werror"; fi
	@$(MAKE) --no-print-directory -s $(SIM_CRYPTOKI)
	@$(MAKE) --no-print-directory -s O=build-san BIN=build-san/dhsm \
	  SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all" \
	  OPT="-O1 -g" build-san/dhsm unit
	@ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
	  sh tests/run.sh --no-selftests build-san/dhsm $(patsubst $(O)/%,build-san/%,$(UNIT_BIN))

demo: deps
	@$(MAKE) --no-print-directory all
	@sh tools/demo.sh ./$(BIN)

# The failed-login guard's races in full: N = 3, 5 and 10 wrong HSM SO
# logins at once from tasks with N session names and from N processes with
# N state folders (tests/lua/guard_test.lua; make test runs N = 3).
races: all
	@state=$$(mktemp -d); XDG_STATE_HOME=$$state DHSM_AUDIT=$$state/audit.jsonl DHSM_GUARD_DIR=$$state/guard \
	  DHSM_RACES=full ./$(BIN) test --yes tests/lua/guard_test.lua; status=$$?; rm -rf $$state; exit $$status

# The kill matrices in full: every kill point of tests/e2e/initialize_kill_test.lua
# (make test runs three of them: DHSM_KILLS=full runs the six) and of an applied
# plan in tests/e2e/plan_test.lua (make test runs two of four).
kills: all
	@state=$$(mktemp -d); XDG_STATE_HOME=$$state DHSM_AUDIT=$$state/audit.jsonl DHSM_GUARD_DIR=$$state/guard \
	  DHSM_KILLS=full ./$(BIN) test --yes tests/e2e/initialize_kill_test.lua tests/e2e/plan_test.lua; status=$$?; \
	  rm -rf $$state; exit $$status

# Each driver in turn (one line each: runs, runs/s, failures); failing
# inputs are kept in $(O)/fuzz-findings/DRIVER/.  FUZZ_SEED=N replays a run.
# A driver still running well past its time is stuck in an input no hook
# can stop (a C pattern match): its seed is replayed with FUZZ_TRACE, its
# own time that limit and the kill twice it (a replay that ends by itself
# did not hang again), and the input it hangs on is kept as DRIVER/hang.in.
FUZZ_SECONDS ?= 60
fuzz: all
	@state=$$(mktemp -d); status=0; limit=$$(( $(FUZZ_SECONDS) * 2 + 30 )); \
	for d in tests/fuzz/*_fuzz.lua; do \
	  name=$$(basename $$d _fuzz.lua); seed=$${FUZZ_SEED:-$$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}; \
	  seed=$$(( seed % 2147483647 )); \
	  run() { XDG_STATE_HOME=$$state DHSM_AUDIT=$$state/audit.jsonl FUZZ_SECONDS=$$secs FUZZ_SEED=$$seed \
	    FUZZ_FINDINGS=$(O)/fuzz-findings FUZZ_TRACE=$$trace timeout -s KILL $$cap ./$(BIN) exec $$d; }; \
	  trace=; secs=$(FUZZ_SECONDS); cap=$$limit; run; rc=$$?; \
	  if [ $$rc = 137 ]; then \
	    mkdir -p $(O)/fuzz-findings/$$name; trace=$(O)/fuzz-findings/$$name/hang.in; secs=$$limit; cap=$$(( limit * 2 )); \
	    echo "$$name: FAIL hang: an input ran past $$limit s (seed $$seed); replaying it to keep the input" >&2; \
	    run >/dev/null 2>&1; [ $$? = 137 ] && echo "$$name: input: $$trace" >&2 || echo "$$name: the replay did not hang" >&2; \
	  fi; [ $$rc = 0 ] || status=1; \
	done; rm -rf $$state; exit $$status

bench: all $(O)/bench/p11_sign_c
	@for b in bench/*.lua; do P11_SIGN_C=$(O)/bench/p11_sign_c ./$(BIN) -I tests exec $$b; done

# the plain C loop bench/pkcs11_bench.lua compares the binding with
$(O)/bench/p11_sign_c: bench/p11_sign.c | $(O)/.dirs
	@mkdir -p $(O)/bench
	$(CC) -std=c11 -D_GNU_SOURCE -O2 $(WARN) $(shell $(PKG) --cflags p11-kit-1) -o $@ $< -ldl

# The man page is made from docs/cli.md, with plain Lua (no pandoc), and
# kept in the repository: tests/lua/docs_test.lua fails when it is stale.
man: docs/dhsm.1

docs/dhsm.1: docs/cli.md tools/man.lua include/dhsm/dhsm.h
	$(LUA) tools/man.lua docs/cli.md > $@.tmp && mv $@.tmp $@

# The failed-login guard's folder, one per host, shared by the group dhsm
# (docs/safety.md: add an operator with usermod -aG dhsm USER).
GUARD_DIR ?= /var/lib/dhsm
install: $(BIN) docs/dhsm.1
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/man/man1
	install -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/dhsm
	install -m 0644 docs/dhsm.1 $(DESTDIR)$(PREFIX)/share/man/man1/dhsm.1
	getent group dhsm >/dev/null || groupadd --system dhsm
	install -d -m 2770 -g dhsm $(DESTDIR)$(GUARD_DIR) $(DESTDIR)$(GUARD_DIR)/locks

clean:
	rm -rf build build-san build-clang $(BIN)
