"""A local fleet simulator: a control plane, tenants, a forge and a registry on one HTTP port.

A real HTTP server the unchanged pipeline runs against: the fixture of the end-to-end tests, the
embedded default of ``fleet-rollout demo`` and the server of the benchmarks. Its contract (routes,
request checks, answer shapes, every knob and its default) is ``docs/simulator.md``. Durations in
:class:`~deploy.sim.fleet.TenantSpec` and :class:`~deploy.sim.fleet.FleetSim` are "sim seconds",
waited as ``sim seconds × time_scale`` real seconds (0.01 makes a 300 s tenant timeout take 3 s).
"""
