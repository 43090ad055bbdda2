"""The one exception type users see: a single line saying what is wrong, where, and how to fix it."""

from __future__ import annotations

import difflib
from collections.abc import Collection

EXIT_USAGE = 2  # bad input: recipe, data, paths, combinations


class MedsftError(Exception):
    """Bad input. `cli.main` prints `error: <where>: <what> — <fix>` and exits with status 2."""

    def __init__(self, what: str, fix: str = "", where: str | None = "") -> None:
        self.what, self.fix, self.where = what, fix, where
        super().__init__(self.line())

    def line(self) -> str:
        text = f"{self.where}: {self.what}" if self.where else self.what
        if self.fix:
            text += f" — {self.fix}"
        return " ".join(text.split())  # always one line

    def at(self, where: str) -> MedsftError:
        """The same error, located (used when the caller knows the file)."""
        if not self.where:
            self.where = where
            self.args = (self.line(),)
        return self


def did_you_mean(name: str, choices: Collection[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else "valid keys: " + ", ".join(sorted(choices))
