"""Errors of the dataset readers: each names the file and the command that fixes it."""


class CorruptDataError(ValueError):
    """A dataset file exists but does not hold what its format says (truncated, overwritten, wrong file)."""
