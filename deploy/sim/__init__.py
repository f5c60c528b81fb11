"""A local fleet simulator: a control plane, tenants, a forge and a registry on one HTTP port.

It honours the contracts in DESIGN.md so the real pipeline can run against it: the demo's
embedded default and the end-to-end tests' fixture. Times in the simulator are "sim seconds",
multiplied by ``time_scale`` (0.01 makes a 300 s tenant timeout take 3 s).
"""
