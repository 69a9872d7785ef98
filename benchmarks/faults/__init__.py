"""Helpers of the reliability benchmark (`benchmarks/reliability.py`): a TCP proxy that cuts the
network, throwaway Redis and PostgreSQL servers, the control plane and dispatcher processes, and a
fleet of real edge agents in a process of its own that can be killed and restarted."""
