"""``ModelInputError``: bad input to the local model, reported as HTTP 400 by the server."""

from __future__ import annotations

__all__ = ["ModelInputError"]


class ModelInputError(ValueError):
    """Input the local model rejects; names the offending field and, if any, the datum index.

    Raised before any state changes, so a rejected call leaves the model as it was.

    Example::

        try:
            model.forward_backward(batch, "cross_entropy", backward=True)
        except ModelInputError as exc:
            print(exc.field, exc.index, exc)   # loss_fn_inputs.weights 1 ...
    """

    field: str
    index: int | None

    def __init__(self, field: str, message: str, *, index: int | None = None) -> None:
        self.field = field
        self.index = index
        self.message = message
        where = field if index is None else f"{field} (datum {index})"
        super().__init__(f"{where}: {message}")
