"""What a user may ask of a conversion, checked in one place for the command line and the app: the settings'
own ranges (finite start and duration included), known model names, and weights that exist."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from stereo_spot.errors import UserError
from stereo_spot.models import ConversionSettings, OutputFormat

# How a settings field is spelt on the command line (the app's labels say the same in words).
OPTION_NAMES = {"output_format": "--format", "divergence": "--divergence", "convergence": "--convergence",
                "depth_model": "--depth-model", "depth_weights": "--depth-weights", "inpaint": "--inpaint",
                "inpaint_weights": "--inpaint-weights", "segment_seconds": "--segment-seconds",
                "start": "--start", "duration": "--duration", "anaglyph": "--anaglyph",
                "swap_eyes": "--swap-eyes", "codec": "--codec", "crf": "--crf", "preset": "--preset",
                "pix_fmt": "--pix-fmt", "max_fps": "--max-fps", "precision": "--precision",
                "auto_convergence": "--convergence", "floating_window": "--floating-window",
                "baseline_mm": "--baseline-mm", "hfov": "--hfov"}

#: ``--convergence auto``: the screen plane chosen frame by frame (``stereo/screen_plane.py``)
AUTO = "auto"


class InvalidChoice(UserError):
    pass


def conversion_settings(**choices: Any) -> ConversionSettings:
    """ConversionSettings from a user's choices, or InvalidChoice with one line naming the option to fix.
    Empty weights mean none. ``convergence="auto"`` asks for the automatic screen plane (``auto_convergence``);
    any other convergence may be given as a number or its text."""
    if isinstance(choices.get("convergence"), str) and choices["convergence"].strip().lower() == AUTO:
        del choices["convergence"]
        choices["auto_convergence"] = True
    for name in ("depth_weights", "inpaint_weights"):
        if isinstance(choices.get(name), str) and not choices[name].strip():
            choices[name] = None
    try:
        settings = ConversionSettings(**choices)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error.get("loc") else "settings"
        raise InvalidChoice(f"{OPTION_NAMES.get(field, field)}: {error['msg']} "
                            f"(got {error.get('input')!r})") from None
    if settings.swap_eyes and settings.output_format.is_rgbd:
        raise InvalidChoice(f"--swap-eyes: --format {settings.output_format.value} is colour and depth, with no "
                            "eyes to swap")
    if settings.depth_video and settings.depth_output:
        raise InvalidChoice("--depth-video: a depth video is rendered from, not written again")
    from stereo_spot.stereo.engine import check_model_choice

    check_model_choice(settings)
    from stereo_spot.media.encode import check_encoder_choice

    check_encoder_choice(settings.codec.value, settings.pix_fmt.value if settings.pix_fmt else None, settings.preset)
    if settings.output_format is OutputFormat.SPATIAL:
        from stereo_spot.media.mvhevc import check_spatial_choice

        check_spatial_choice(settings.pix_fmt.value if settings.pix_fmt else None)
    return settings
