"""The API boundary: an error raised to the user carries the user's frames, not ours."""

from __future__ import annotations

from ..errors import FiretitanError

__all__ = ["trim_internal_frames"]


def trim_internal_frames(error: BaseException) -> BaseException:
    """``error`` ready to be raised at the API boundary: a :class:`FiretitanError` loses the
    library's internal frames (where a background task built it), so the traceback a user sees
    is their own code and the one line that raised, then the message. Its ``__cause__`` (an
    ``httpx`` error, a server reply) is kept. Any other exception is a bug in the library or in
    a user callback and keeps every frame.

    Example::

        raise trim_internal_frames(self._error)
    """
    if isinstance(error, FiretitanError):
        return error.with_traceback(None)
    return error

