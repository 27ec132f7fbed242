"""Error types that cross stage (and process) boundaries."""

from __future__ import annotations


class InputError(Exception):
    """A problem with the user's input: names the view at fault (if any) and how to fix it."""

    def __init__(self, message: str, *, view: str | None = None, index: int | None = None, fix: str = ""):
        self.message = message
        self.view = view
        self.index = index
        self.fix = fix
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.view is not None:
            where = f"view '{self.view}'" + (f" (#{self.index})" if self.index is not None else "") + ": "
        text = where + self.message
        if self.fix:
            text += f" Fix: {self.fix}"
        return text


class Cancelled(Exception):
    """Raised inside a long loop when the caller asked to stop; never a generic error."""
