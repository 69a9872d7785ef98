"""Suite-wide setup: what the code under test caches on disk goes to a scratch folder, not into
the checkout's `.fleet/` (subprocesses the tests start inherit it)."""

import os
import shutil
import tempfile


def pytest_configure(config):
    scratch = tempfile.mkdtemp(prefix="fleet-tests-")
    config.add_cleanup(lambda: shutil.rmtree(scratch, ignore_errors=True))
    os.environ.setdefault("FLEET_COMPUTE_CACHE", os.path.join(scratch, "compute-choice.json"))
