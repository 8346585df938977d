"""The test lab: routed network namespaces with faults and services (tests, bench, demo)."""

from lab.network import ACTIONS, REJECTS, ROUTE_TYPES, Lab, sweep

__all__ = ["ACTIONS", "REJECTS", "ROUTE_TYPES", "Lab", "sweep"]
