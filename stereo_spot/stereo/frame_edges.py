"""What "the depth at the frame edges" is, for the two rules that keep the edges at or behind the screen:
``--auto-divergence`` (``auto_divergence``, over a few sampled frames) and ``--convergence auto``
(``screen_plane``, frame by frame). Both measure the depth in a strip along the left and the right edge and take
a high percentile of it, so that a little of the picture may stand out without moving the screen.
"""

#: Depth along the frame edges (strips of this share of the width) should sit behind the screen ...
EDGE_STRIP = 0.02
#: ... up to this percentile of it.
EDGE_PERCENTILE = 90.0


def edge_strip_width(width: int) -> int:
    """Pixels of each edge strip of an image ``width`` pixels wide: at least one."""
    return max(1, round(EDGE_STRIP * width))
