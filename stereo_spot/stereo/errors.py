"""Errors the stereo engine raises for bad input: one readable line, no traceback needed."""

from stereo_spot.errors import UserError


class StereoInputError(UserError, ValueError):
    """The input (an image, a disparity map, a frame batch) cannot be converted; the message says why."""
