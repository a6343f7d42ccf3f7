"""The base of every config section: each section checks its own fields, once, where it is defined.

A section (`ModelConfig`, `ObjectiveConfig`, `OptimConfig`, `EvalConfig`, the data and run
sections) lists its bad fields in `problems()` as ``(field, message)`` pairs; building one with a
bad field raises `ConfigFieldError` holding all of them, so a config loader can report each bad
field on its own line under its dotted key (``objective.alpha: must be >= 0, got -1``).
"""

from __future__ import annotations

Problem = tuple[str, str]
"""(field, message), e.g. ("alpha", "must be >= 0, got -1")."""


class ConfigFieldError(ValueError):
    """Bad fields of one config section, one `Problem` per field."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__("; ".join(f"{f} {m}" for f, m in self.problems))


class Section:
    """Mixin of the config dataclasses: `problems()` is checked when the section is built."""

    def problems(self) -> list[Problem]:
        return []

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ConfigFieldError(problems)
