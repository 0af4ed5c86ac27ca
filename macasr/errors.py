"""Errors a user can act on.

Every `MacasrError` message is one line that names the file, line or key at fault and says what
was expected. The CLI prints it in red and exits 1; tracebacks are shown only with MACASR_DEBUG=1.
"""


class MacasrError(Exception):
    """Base class for errors caused by the user's input rather than by a bug."""


class ConfigError(MacasrError):
    """A TOML config is malformed or invalid; the message lists every problem, one per line."""

    def __init__(self, problems: list[str] | str, source: str | None = None) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        prefix = f"{source}: " if source else ""
        super().__init__("\n".join(prefix + p for p in self.problems))


class DataError(MacasrError):
    """A manifest line or an audio file cannot be used."""


class CheckpointError(MacasrError):
    """A checkpoint is missing, truncated or not a macasr checkpoint."""


class DeprecatedSetting(FutureWarning):
    """A config key from an earlier release that is still read; the CLI prints it as one yellow line."""
