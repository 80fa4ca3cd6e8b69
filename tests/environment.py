"""Loaded as a pytest plugin (`-p tests.environment` in pytest.ini) so that it runs
before pytest-django reads the settings: every test run gets its own Celery queue
namespace and var/ directory, so it never touches a running `make run` appliance."""

import os
import tempfile
import uuid

os.environ.setdefault("APPLIANCE_INSTANCE", f"test-{uuid.uuid4().hex[:8]}")
os.environ.setdefault("APPLIANCE_VAR_DIR", tempfile.mkdtemp(prefix="appliance-test-"))
# Reconfiguration tests inject failures at each step (refused unless this is on).
os.environ.setdefault("APPLIANCE_ALLOW_FAULT_INJECTION", "true")
