"""The two failures a user can act on, each carrying its exit code.

Anything else raised is a bug: the entrypoint still writes outputs and the report for it.
"""


class ConfigError(Exception):
    """A bad input, found before any network call (exit 2). Names the input, never a secret."""

    exit_code = 2

    def __init__(self, input_name: str, message: str) -> None:
        super().__init__(f"{input_name}: {message}")
        self.input_name = input_name


class ConfigErrors(Exception):
    """Every bad input at once, so one run shows the user all of them (exit 2)."""

    exit_code = 2

    def __init__(self, errors: list[ConfigError]) -> None:
        super().__init__("; ".join(str(e) for e in errors))
        self.errors = errors


class DeployFailed(Exception):
    """A remote or rollout failure (exit 1), worded for the person reading the Actions log."""

    exit_code = 1


class DeadlineExceeded(DeployFailed):
    """The overall ``timeout`` ran out; the run stops cleanly and still reports."""
