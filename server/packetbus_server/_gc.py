"""The serving process's garbage collector, tuned once it has started.

Measured on the consume path (bench/delivery_bench.py, 4 x 20,000 packets through
one server, GC time read from `gc.callbacks`): the cyclic collector took ~10% of
the server's CPU, 60% of that in 15 full collections of ~37 ms each, every one
walking the modules, protobuf descriptors and gRPC objects loaded at start, none
of which is ever garbage. The hot paths make short-lived acyclic objects (bytes,
small dataclasses), freed by reference counting; the collector only finds cycles.
"""

from __future__ import annotations

import gc

# Allocations (net of frees) between young collections. Python's default (700,
# 10, 10) runs one every few hundred packets of a 200-packet batch's objects and
# promotes whatever a pending await holds into the older generations.
_YOUNG = 20_000


def settle_heap() -> None:
    """Move everything alive now (the started server) out of the collector's
    view (`gc.freeze`), so full collections walk only what serving made, and
    collect the young generation less often."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(_YOUNG, older, oldest)
