"""fleet-rollout: ship one build to a fleet through a control plane, prove it, then promote.

Data flows one way: ``entrypoint`` → :mod:`deploy.config` (the only reader of the
environment) → the stages (:mod:`deploy.gates`, :mod:`deploy.rollout`, :mod:`deploy.verify`,
:mod:`deploy.promote`) → :mod:`deploy.report` (the only writer of outputs, summary and report).
:mod:`deploy.runner` is the one place that speaks the Actions runner's protocol.
"""

__version__ = "1.0.0"
