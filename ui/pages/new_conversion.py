"""New conversion: upload a video, choose the 3D format and strength, start the job."""

import streamlit as st

from stereo_spot import steps
from stereo_spot.errors import UserError, one_line
from stereo_spot.media.encode import configured_crf
from stereo_spot.models import (
    AnaglyphMethod,
    ConversionSettings,
    OutputFormat,
    PixelFormat,
    Precision,
    VideoCodec,
)
from stereo_spot.naming import depth_file_name, output_file_name
from stereo_spot.ports import StoreError
from stereo_spot.ui import context, depth_form, services, submission
from stereo_spot.ui.backend import staging_area
from stereo_spot.ui.upload_widget import upload_widget
from stereo_spot.ui.uploads import UploadError, too_large_message

config = context.settings()
backend = context.backend()
user = context.identity()
area = staging_area(config)
md = services.escape_markdown


def fresh_picker(error: str | None = None) -> None:
    """Forget the current upload (and its file) and show an empty picker, with the reason if there is one."""
    old = st.session_state.get("upload_token")
    if old:
        area.discard(old)
    st.session_state["upload_token"] = area.new_token(user.user)
    if error:
        st.session_state["upload_error"] = error


if "upload_token" not in st.session_state:
    fresh_picker()
token: str = st.session_state["upload_token"]

st.title("New conversion")
st.caption("Upload an ordinary video; stereo-spot estimates depth and renders a second eye. The job keeps "
           "running if you close this page.")

if message := st.session_state.pop("upload_error", None):
    st.error(md(message), icon=":material/error:")

staged = area.get(token)
if staged is None:  # the drop zone, until a file is in; then the checked file takes its place
    event = upload_widget(token, config.max_upload_bytes)
    if event and event.get("token") == token:
        if event.get("kind") == "too_large":
            name = str(event.get("name") or "the file")
            fresh_picker(too_large_message(name, event.get("size"), config.max_upload_bytes))
            st.rerun()
        elif event.get("kind") == "failed" and area.get(token) is None:
            fresh_picker(str(event.get("error") or "the upload failed; try again"))
            st.rerun()

summary: services.VideoSummary | None = None
if staged is not None:
    area.touch(token)  # in use: the idle sweep (UPLOAD_IDLE_SECONDS) leaves it while the page is worked on
    if not staged.ok:
        fresh_picker(staged.error)
        st.rerun()
    probe_key = f"probe-{token}"
    if probe_key not in st.session_state:
        try:
            with st.spinner(f"Checking {md(staged.name)}…"):
                summary = services.check_video(staged.path, staged.name, config)
                services.check_limits(summary, None, config)  # refused before any job exists
                st.session_state[probe_key] = summary
            # The title starts as the file name; set through the widget's state so it fills in the box that
            # was already on the page before the upload.
            st.session_state[f"title-{token}"] = services.default_title(staged.name)
        except UploadError as exc:
            fresh_picker(str(exc))
            st.rerun()
    summary = st.session_state[probe_key]
    # The one place the file is described: its name, then size, duration and picture.
    with st.container(border=True, key="checked-file"):
        left, right = st.columns([5, 2], vertical_alignment="center")
        left.markdown(f":material/movie: **{md(summary.name)}**  \n{md(summary.details())}")
        if right.button("Choose another file", icon=":material/swap_horiz:"):
            fresh_picker()
            st.rerun()

st.subheader("3D settings")
title = st.text_input("Title", key=f"title-{token}", placeholder="defaults to the file name",
                      help="Names the job and the download file.")
output_format = st.radio("Format", options=list(OutputFormat), format_func=lambda f: f.label,
                         captions=[services.FORMAT_HELP[f] for f in OutputFormat], key="output_format")
anaglyph = AnaglyphMethod.DUBOIS
if output_format == OutputFormat.ANAGLYPH:
    anaglyph = st.radio("Anaglyph method", options=list(AnaglyphMethod), key="anaglyph",
                        format_func=lambda m: services.ANAGLYPH_HELP[m].split(":")[0],
                        captions=[services.ANAGLYPH_HELP[m].split(": ", 1)[1] for m in AnaglyphMethod])
spatial: dict[str, float] = {}  # the camera a spatial video declares; the settings' defaults for other formats
if output_format == OutputFormat.SPATIAL:
    camera = st.columns(2)
    # no widget bounds: the settings' own rule (stereo_spot.choices) judges the values, as on the command line
    spatial = {"baseline_mm": camera[0].number_input(
                   "Baseline (mm)", value=ConversionSettings.model_fields["baseline_mm"].default, step=1.0,
                   key="baseline_mm", help=services.BASELINE_HELP),
               "hfov": camera[1].number_input(
                   "Horizontal field of view (°)", value=ConversionSettings.model_fields["hfov"].default, step=1.0,
                   key="hfov", help=services.HFOV_HELP)}
auto_divergence = st.toggle("Choose divergence and convergence from the scene", key="auto_divergence",
                            help="Measures the depth range of the video once and keeps the nearest things "
                                 "within about 2 % in front of the screen and the farthest within 1 % behind it.")
divergence = st.slider("Divergence (% of width)", min_value=0.0, max_value=10.0, value=2.0, step=0.1,
                       key="divergence", disabled=auto_divergence)
st.caption(services.DIVERGENCE_HELP)
convergence = st.slider("Convergence", min_value=0.0, max_value=1.0, value=0.5, step=0.05, key="convergence",
                        disabled=auto_divergence)
st.caption(services.CONVERGENCE_HELP)
edges = st.columns(2)
auto_convergence = edges[0].toggle("Convergence follows the frame edges", key="auto_convergence",
                                   help="Frame by frame, the screen plane moves back to what touches the left and "
                                        "right edges (never in front of the convergence set here).")
floating_window = edges[1].toggle("Floating window", value=True, key="floating_window",
                                  help="Masks the left eye's left edge and the right eye's right edge where "
                                       "something in front of the screen touches them.")

with st.expander("Models and part of the video"):
    models = st.columns(2)
    depth_model = models[0].selectbox("Depth model", options=services.depth_model_names(), key="depth_model",
                                      help=services.DEPTH_MODEL_HELP)
    depth_weights = models[0].text_input("Depth model weights", key="depth_weights",
                                         placeholder="s3://bucket/prefix or a folder on the server",
                                         help="Needed by neural depth models; none for heuristic.")
    inpaint = models[1].selectbox("Hole filling", options=services.inpainter_names(), key="inpaint",
                                  help=services.INPAINT_HELP)
    inpaint_weights = models[1].text_input("Hole filling weights", key="inpaint_weights",
                                           placeholder="s3://bucket/prefix or a folder on the server",
                                           help="Needed by diffusion; none for classical.")
    part = st.columns(2)
    start = part[0].number_input("Start (seconds)", min_value=0.0, value=None, step=1.0, key="start",
                                 placeholder="from the beginning")
    duration = part[1].number_input("Duration (seconds)", min_value=0.0, value=None, step=1.0, key="duration",
                                    placeholder="to the end")
    precision = st.selectbox("Model precision", options=list(Precision), key="precision",
                             help="The number format of the neural models: auto is fp16 on a GPU (bf16 for a "
                                  "model that overflows in fp16) and fp32 on the CPU.")

depth = depth_form.depth_choices(area, user.user, config.max_upload_bytes)

AUTOMATIC = "automatic"
with st.expander("Encoding"):
    codec_columns = st.columns(3)
    codec = codec_columns[0].selectbox("Codec", options=list(VideoCodec), key="codec",
                                       help="auto: NVENC H.264 when a GPU converts and it opens, else libx264. "
                                            "HEVC is smaller at the same quality; fewer players decode it.")
    crf = codec_columns[1].number_input("Quality (CRF)", min_value=0, max_value=51, value=None, step=1, key="crf",
                                        placeholder=str(configured_crf()),  # STEREO_SPOT_CRF here, else 18
                                        help="Constant quality: 0 is lossless, lower is better and larger; "
                                             "about 6 more halves the size.")
    preset = codec_columns[2].text_input("Preset", key="preset", placeholder="fast (NVENC: p4)",
                                         help="The encoder's speed preset: ultrafast … veryslow, NVENC p1 … p7.")
    format_columns = st.columns(2)
    pix_fmt = format_columns[0].selectbox(
        "Pixel format", options=[AUTOMATIC, *PixelFormat], key="pix_fmt",
        help="automatic: 4:4:4 for anaglyph (red and cyan edges stay sharp), 8-bit 4:2:0 otherwise.")
    max_fps = format_columns[1].number_input("Frame rate limit (fps)", min_value=1.0, max_value=480.0, value=None,
                                             step=1.0, key="max_fps", placeholder="the video's own")
encoding = {"codec": codec, "crf": crf, "preset": preset.strip() or None,
            "pix_fmt": None if pix_fmt == AUTOMATIC else pix_fmt, "max_fps": max_fps, "precision": precision}



@st.cache_data(max_entries=16, show_spinner=False)
def converted_frame(path: str, size: int, at: float, settings_json: str, depth_path: str | None = None,
                    depth_size: int = 0):
    """One frame converted as the job will convert it (``stereo-spot preview``), from the uploaded depth video
    where there is one; kept per file, moment and settings, so moving a slider back shows the earlier picture at
    once."""
    from stereo_spot.models import ConversionSettings
    from stereo_spot.stereo.preview import preview_frame

    return preview_frame(path, at, ConversionSettings.model_validate_json(settings_json), device="cpu",
                         depth_video=depth_path)


if summary is not None and staged is not None and staged.path is not None:
    with st.expander("Preview", expanded=True, icon=":material/visibility:"):
        moment = st.slider("Moment (seconds)", min_value=0.0, max_value=max(0.1, round(summary.duration_seconds, 1)),
                           value=services.preview_moment(summary), step=0.1, key=f"preview-at-{token}")
        depth_file = depth.depth_video.path if depth.depth_video is not None else None
        try:
            preview_settings = services.checked_settings(
                user, config, output_format=output_format, anaglyph=anaglyph, divergence=divergence,
                convergence=convergence, depth_model=depth_model, depth_weights=depth_weights, inpaint=inpaint,
                inpaint_weights=inpaint_weights, auto_convergence=auto_convergence, floating_window=floating_window,
                precision=precision, **spatial, start=start, duration=duration,
                depth_video=depth.depth_video is not None)
            with st.spinner("Converting one frame…"):
                frame = converted_frame(str(staged.path), staged.path.stat().st_size, moment,
                                        preview_settings.model_dump_json(),
                                        str(depth_file) if depth_file else None,
                                        depth_file.stat().st_size if depth_file else 0)
            note = " (divergence and convergence as set here; the job measures its own)" if auto_divergence else ""
            st.image(frame, caption=f"{output_format.label} at {moment:g} s{note}", width="stretch",
                     output_format="PNG")  # lossless: the eyes differ by a few pixels
        except UserError as exc:
            message = (services.naming_the_upload(exc, depth_file, depth.depth_video.name) if depth_file
                       else one_line(exc))
            st.caption(md(f"No preview: {message}"))

job_title = title.strip() or (services.default_title(staged.name) if summary else "untitled")
if summary:
    result_name = depth_file_name(job_title) if depth.depth_output else output_file_name(job_title, output_format)
    st.caption(f"The result downloads as **{md(result_name)}**.")

if st.button("Make the depth video" if depth.depth_output else "Convert to 3D", type="primary",
             disabled=summary is None, icon=":material/play_arrow:"):
    assert staged is not None and staged.path is not None
    job = None
    try:
        submission.preflight(backend, config)
        job_settings = services.checked_settings(
            user, config, output_format=output_format, anaglyph=anaglyph, divergence=divergence,
            convergence=convergence, auto_divergence=auto_divergence, depth_model=depth_model,
            depth_weights=depth_weights,
            inpaint=inpaint, inpaint_weights=inpaint_weights, start=start, duration=duration,
            auto_convergence=auto_convergence, floating_window=floating_window, **encoding, **spatial,
            depth_output=depth.depth_output, depth_video=depth.depth_video is not None)
        # Checked again on the file that is stored, not on what the page remembers from the upload.
        summary = services.check_video(staged.path, staged.name, config)
        services.check_limits(summary, job_settings, config)
        if depth.depth_video is not None:  # refused before any job exists when it does not fit the video
            services.check_depth_video(depth.depth_video.path, depth.depth_video.name, staged.path, job_settings)
        with st.spinner(f"Storing {md(staged.name)}…"):
            job = services.create_user_job(backend, job_settings, job_title, user, config)
            if depth.depth_video is not None:  # before the source, whose upload starts the run on a cluster
                steps.store_depth_video(backend, job.job_id, depth.depth_video.path)
            steps.store_source(backend, job.job_id, staged.path)
        started = submission.start_pipeline(backend, config, job.job_id)
    except (UserError, StoreError, OSError, ValueError) as exc:
        if job is not None and not isinstance(exc, submission.SubmissionError):
            # The job never got its source (or could not be started): remove it rather than leave it half-made.
            try:
                steps.delete_job(backend, job.job_id)
            except (UserError, StoreError, OSError):
                pass
        st.error(md(context.store_error_message(exc) if isinstance(exc, (StoreError, OSError)) else one_line(exc)),
                 icon=":material/error:")
        if isinstance(exc, submission.SubmissionError) and job is not None:
            st.page_link("pages/job.py", label="Open the job", query_params={"job": job.job_id})
        st.stop()
    fresh_picker()
    depth_form.discard(area)
    st.session_state["job_notice"] = started.how + (f" [Open the run]({started.run_link})" if started.run_link
                                                    else "")
    st.switch_page("pages/job.py", query_params={"job": job.job_id})
