"""Shared, numpy-only pieces of QSAE Fleet: wire formats and the data module.

Everything here is imported by the edge agent, the control plane and the workers alike, so it
depends on numpy (and `cryptography` for signatures) and nothing else.
"""

WIRE_SCHEMA_VERSION = 1
