"""Domain errors. Each carries enough context (file, field, reason) for a
caller to show a clear message without a stack trace."""


class InfluenceError(Exception):
    """Base class of every error this package raises on purpose."""


class DataError(InfluenceError):
    """A data file is missing, unreadable or malformed."""

    def __init__(self, path: str, problem: str, column: str | None = None):
        self.path, self.problem, self.column = str(path), problem, column
        where = f"{self.path}" + (f", column {column!r}" if column else "")
        super().__init__(f"{where}: {problem}")


class StoreError(InfluenceError):
    """A store is missing, corrupt, or does not match what the reader expects."""


class QueryError(InfluenceError):
    """A query batch does not fit the store's model (shape, target, values)."""

    def __init__(self, field: str, problem: str, fields: tuple[str, ...] | None = None):
        """``fields``: every field the problem concerns (a prompt and its completion), ``field`` first."""
        self.field, self.problem, self.fields = field, problem, fields or (field,)
        super().__init__(f"{field}: {problem}")
