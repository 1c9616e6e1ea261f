#!/usr/bin/env python
"""chunk + concat by PyAV (stereo_spot.media) against the same stream copy by the ffmpeg command line.

Both sides do the same work on the same ~60 s 720p H.264 + AAC source: split the video by stream copy at
keyframes into segments of about --segment-seconds, then join the segments by stream copy with the source's
audio mapped back, index at the front (+faststart). The segments themselves stand in for converted segments.
Runs are interleaved (PyAV, ffmpeg, PyAV, ...) and the best of --runs is kept for each side.

    python bench/bench_media.py [--seconds 60] [--segment-seconds 10] [--runs 3]

Needs Debian's ffmpeg: installed here when running as root, otherwise the script says how.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from stereo_spot.media.chunk import chunk_video
from stereo_spot.media.concat import concat_segments
from stereo_spot.media.frames import frame_count
from stereo_spot.media.probe import probe

TARGET_RATIO = 0.8


def ensure_ffmpeg() -> str:
    found = shutil.which("ffmpeg")
    if found:
        return found
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        print("installing Debian's ffmpeg (apt-get) ...", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "ffmpeg"],
            check=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
        found = shutil.which("ffmpeg")
    if not found:
        sys.exit("ffmpeg is needed for the comparison: sudo apt-get update && sudo apt-get install -y ffmpeg")
    return found


def make_source(ffmpeg: str, path: Path, seconds: float) -> None:
    """720p30 H.264 (keyframe every 2 s, B-frames) at about 5 Mbit/s, with a stereo AAC tone."""
    subprocess.run(
        [ffmpeg, "-v", "error", "-y",
         "-f", "lavfi", "-i", f"testsrc2=size=1280x720:rate=30:duration={seconds}",
         "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}",
         "-vf", "noise=alls=12:allf=t", "-c:v", "libx264", "-preset", "ultrafast", "-bf", "2",
         "-g", "60", "-keyint_min", "60", "-sc_threshold", "0", "-b:v", "5M", "-pix_fmt", "yuv420p",
         "-c:a", "aac", "-ac", "2", "-b:a", "128k", "-shortest", str(path)],
        check=True,
    )  # fmt: skip


def run_pyav(source: Path, work: Path, segment_seconds: float) -> dict[str, float]:
    segments_dir, out = work / "pyav_segments", work / "pyav_final.mp4"
    t0 = time.perf_counter()
    segments = chunk_video(source, segments_dir, segment_seconds)
    t1 = time.perf_counter()
    concat_segments(segments, source, out)
    t2 = time.perf_counter()
    return {"chunk": t1 - t0, "concat": t2 - t1, "total": t2 - t0, "segments": len(segments), "out": out}


def run_ffmpeg(ffmpeg: str, source: Path, work: Path, segment_seconds: float) -> dict[str, float]:
    segments_dir, out = work / "ffmpeg_segments", work / "ffmpeg_final.mp4"
    segments_dir.mkdir()
    t0 = time.perf_counter()
    subprocess.run(
        [ffmpeg, "-v", "error", "-y", "-i", str(source), "-map", "0:v:0", "-c", "copy",
         "-f", "segment", "-segment_time", str(segment_seconds), "-reset_timestamps", "0",
         "-segment_format", "mp4", str(segments_dir / "%05d.mp4")],
        check=True,
    )  # fmt: skip
    t1 = time.perf_counter()
    segments = sorted(segments_dir.glob("*.mp4"))
    listing = work / "segments.txt"
    listing.write_text("".join(f"file '{s}'\n" for s in segments))
    subprocess.run(
        [ffmpeg, "-v", "error", "-y", "-f", "concat", "-safe", "0", "-i", str(listing), "-i", str(source),
         "-map", "0:v", "-map", "1:a", "-c", "copy", "-movflags", "+faststart", str(out)],
        check=True,
    )  # fmt: skip
    t2 = time.perf_counter()
    return {"chunk": t1 - t0, "concat": t2 - t1, "total": t2 - t0, "segments": len(segments), "out": out}


def best_of(runs: int, sides: dict[str, Callable[[Path], dict]], root: Path) -> dict[str, dict]:
    best: dict[str, dict] = {}
    for n in range(runs):
        for name, side in sides.items():
            work = root / f"{name}-{n}"
            work.mkdir()
            result = side(work)
            if name not in best or result["total"] < best[name]["total"]:
                best[name] = result
            shutil.rmtree(work / f"{name}_segments", ignore_errors=True)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--segment-seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    ffmpeg = ensure_ffmpeg()

    with tempfile.TemporaryDirectory(prefix="bench-media-") as tmp:
        root = Path(tmp)
        source = root / "source.mp4"
        make_source(ffmpeg, source, args.seconds)
        info = probe(source)
        frames = frame_count(source)
        size_mb = info.size_bytes / 1e6
        best = best_of(
            args.runs,
            {
                "pyav": lambda work: run_pyav(source, work, args.segment_seconds),
                "ffmpeg": lambda work: run_ffmpeg(ffmpeg, source, work, args.segment_seconds),
            },
            root,
        )
        checks = {name: frame_count(r["out"]) for name, r in best.items()}
        audio = {name: len(probe(r["out"]).audio) for name, r in best.items()}

    print(
        f"source: {info.duration_seconds:.1f} s, {info.video.width}x{info.video.height} "
        f"{info.video.codec} + {len(info.audio)} audio, {frames} frames, {size_mb:.1f} MB; "
        f"segments of ~{args.segment_seconds:g} s; best of {args.runs} interleaved runs"
    )
    print()
    print(f"| {'side':<7} | {'segments':>8} | {'chunk s':>8} | {'concat s':>8} | {'total s':>8} | "
          f"{'MB/s':>7} | {'out frames':>10} | {'out audio':>9} |")  # fmt: skip
    print(f"|{'-' * 9}|{'-' * 10}|{'-' * 10}|{'-' * 10}|{'-' * 10}|{'-' * 9}|{'-' * 12}|{'-' * 11}|")
    for name in ("pyav", "ffmpeg"):
        r = best[name]
        print(
            f"| {name:<7} | {r['segments']:>8} | {r['chunk']:>8.3f} | {r['concat']:>8.3f} | {r['total']:>8.3f} | "
            f"{size_mb / r['total']:>7.1f} | {checks[name]:>10} | {audio[name]:>9} |"
        )
    ratio = best["ffmpeg"]["total"] / best["pyav"]["total"]
    print()
    print(f"throughput ratio PyAV / ffmpeg CLI: {ratio:.2f} (target >= {TARGET_RATIO}) "
          f"{'OK' if ratio >= TARGET_RATIO else 'BELOW TARGET'}")  # fmt: skip
    print(
        f"  chunk: {best['ffmpeg']['chunk'] / best['pyav']['chunk']:.2f}  "
        f"concat: {best['ffmpeg']['concat'] / best['pyav']['concat']:.2f}"
    )
    if checks["pyav"] != frames:
        sys.exit(f"PyAV output has {checks['pyav']} frames, the source {frames}")


if __name__ == "__main__":
    main()
