"""The one exception the media layer raises for bad input."""

from __future__ import annotations

from stereo_spot.errors import UserError


class MediaError(UserError, ValueError):
    """A media file cannot be used; the message is one line a user can act on.

    Examples: ``input.mp4 is empty (0 bytes)``, ``notes.mp4 is not a video file FFmpeg can read``,
    ``song.m4a has no video stream``, ``clip.mp4 is truncated: ...``.
    """
