"""``python -m deploy`` is the ``fleet-rollout`` command: ``python -m deploy demo``, ``--help``, …"""

from deploy.main import cli

if __name__ == "__main__":
    cli()
