"""The QSAE Fleet edge agent: device daemon, runtime and CLI (no torch, no server stack)."""
