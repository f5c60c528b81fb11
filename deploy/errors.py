"""The two failures a user can act on: a configuration error (exit 2) and a deploy failure (exit 1).

:func:`deploy.main.run` maps them to exit codes, in one place.

Anything else raised is a bug: the entrypoint still writes outputs and the report for it.
"""


class ConfigError(Exception):
    """A bad input, found before any network call (exit 2). Names the input, never a secret.

    ``about``: the inputs of one error that concerns several at once for one reason (every
    ``FLEET_*`` left as its literal ``${{ … }}``); its message names them itself, so it is said
    once rather than once per input.
    """

    def __init__(self, input_name: str, message: str, *, about: tuple[str, ...] = ()) -> None:
        self.input_name, self.message, self.about = input_name, message, about
        super().__init__(self.naming(input_name))

    def naming(self, subject: str) -> str:
        """The message about ``subject``: the input inside Actions, its ``FLEET_*`` variable elsewhere.

        Messages are written as predicates (``is required``, ``must start with '/'``) or as a
        finding (``expected a whole number (got 'x')``), so the subject reads naturally in front."""
        if self.about:
            return self.message
        verb = self.message.split(" ", 1)[0]
        return f"{subject} {self.message}" if verb in PREDICATE_VERBS else f"{subject}: {self.message}"

    @property
    def title(self) -> str:
        """The annotation's title inside Actions."""
        return f"inputs {', '.join(self.about)}" if self.about else f"input {self.input_name}"


PREDICATE_VERBS = frozenset({"is", "must", "needs", "has", "cannot"})


class ConfigErrors(Exception):
    """Every bad input at once, so one run shows the user all of them (exit 2)."""

    def __init__(self, errors: list[ConfigError]) -> None:
        super().__init__("; ".join(str(e) for e in errors))
        self.errors = errors


class DeployFailed(Exception):
    """A remote or rollout failure (exit 1), worded for the person reading the Actions log."""


class Skip(Exception):
    """Stop on purpose: kill switch before anything moved, or superseded. Exit 0, ``ok=false``."""


class Abort(DeployFailed):
    """Stop on purpose mid-rollout (the live kill switch): the fleet is mixed, so exit 1.

    Never a reason to roll back: a person set the switch to make the fleet hold still."""


class Inconclusive(DeployFailed):
    """A party the run must hear from could not be read (the forge's kill switch, a registry, a
    metrics API): the run stops and holds, exit 1. It is no evidence against the build, so
    ``on-failure: rollback`` does not fire."""


class DeadlineExceeded(DeployFailed):
    """The overall ``timeout`` ran out; the run stops cleanly and still reports."""
