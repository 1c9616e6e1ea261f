"""The media layer (PyAV): probe, chunk by stream copy at keyframes, decode/encode frames, concat with audio.

Modules: ``probe`` (what a file holds), ``chunk`` (split, no re-encode), ``frames`` (RGB in and out with the
source's timestamps), ``encode`` (encoder settings per stereo layout), ``concat`` (join, put the audio back),
``errors`` (MediaError: one readable line for bad input). Import from the modules, e.g.
``from stereo_spot.media.probe import probe``.
"""
