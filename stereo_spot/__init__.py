"""stereo-spot: 2D video to stereoscopic 3D. chunk → convert segments in parallel → concat."""

__version__ = "0.1.0"
