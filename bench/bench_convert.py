"""Speed of the embedded pipeline, as ratios measured in one run (absolute times drift on a shared machine).

    1. convert vs a plain decode → encode of the same 720p source to the same output size (2560x720, Full SBS)
       with the same encoder settings                                            target >= 0.5 of its throughput
       on two clips: the layered sample scene, and a "detailed" one closer to real footage (fine texture,
       film grain, a camera that pans and zooms, objects at several depths moving with parallax), and on a
       real clip (Megamind.avi, 720x528, from scripts/fetch-real-data) when it is there
    2. the whole pipeline (chunk → convert → concat) with 2 workers vs 1          target >= 1.7x faster
       and 2 workers on 2 cores vs 1 worker pinned to 1 core                       target >= 1.5x
       next to this machine's own ceiling: independent single-threaded work, 2 processes on 2 cores vs 1
    3. peak memory of a conversion 10x longer                                      target < +10% peak RSS

and a profile of one convert: where the time goes.

    .venv/bin/python bench/bench_convert.py [--seconds 6] [--quick]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

from stereo_spot.media.encode import EncodeSettings, settings_for
from stereo_spot.media.frames import VideoWriter, read_frames
from stereo_spot.media.probe import probe
from stereo_spot.models import ConversionSettings, OutputFormat
from stereo_spot.sample import write_sample
from stereo_spot.stereo.segment import convert_segment

#: the real clip part 1 converts: moving real footage, the largest of the fetched clips (720x528)
REAL_CLIP = "Megamind.avi"


def plain_transcode(src: Path, dst: Path) -> int:
    """The baseline: decode, put the frame twice side by side (the same output size as Full SBS), encode."""
    video = probe(src).video
    settings = settings_for(OutputFormat.SBS)
    frames = 0
    with VideoWriter(dst, 2 * video.width, video.height, video.time_base, video.fps, settings) as writer:
        for frame in read_frames(src):
            writer.write(np.concatenate([frame.rgb, frame.rgb], axis=1), frame.pts)
            frames += 1
    return frames


def write_detailed_clip(path: Path, seconds: float, size: tuple[int, int] = (1280, 720), fps: int = 30) -> Path:
    """A clip with what makes real footage expensive to encode and to convert: detail at every scale, grain
    (a fresh noise field per frame), a camera that pans and slowly zooms, and eight textured objects at
    different depths that move with the camera's parallax plus their own motion."""
    import cv2

    width, height = size
    rng = np.random.default_rng(7)
    big_w, big_h = int(width * 1.6), int(height * 1.6)
    background = np.zeros((big_h, big_w, 3), np.float32)
    for scale in (2, 5, 13, 37, 101):  # value noise at several scales
        small = rng.random((big_h // scale + 2, big_w // scale + 2, 3)).astype(np.float32)
        background += cv2.resize(small, (big_w, big_h), interpolation=cv2.INTER_CUBIC)[:big_h, :big_w] / 5
    background = np.clip(background * 255, 0, 255)
    objects = []
    for i in range(8):
        ow, oh = int(rng.integers(width // 12, width // 4)), int(rng.integers(height // 10, height // 3))
        texture = cv2.resize(rng.random((oh // 3 + 1, ow // 3 + 1, 3)).astype(np.float32), (ow, oh)) * 255
        objects.append((texture, 0.2 + 0.1 * i, rng.random() * width, rng.random() * (height - oh),
                        (rng.random() - 0.5) * 60))
    frames = int(round(seconds * fps))
    with VideoWriter(path, width, height, Fraction(1, fps), Fraction(fps), EncodeSettings(crf=16)) as writer:
        for index in range(frames):
            t = index / fps
            pan_x, pan_y, zoom = 90 * t, 25 * np.sin(t), 1.0 + 0.04 * t
            matrix = np.float32([[zoom, 0, -(big_w - width) / 2 + pan_x * 0.3], [0, zoom, -(big_h - height) / 2
                                                                                  + pan_y * 0.3]])
            frame = cv2.warpAffine(background, matrix, (width, height), borderMode=cv2.BORDER_REFLECT)
            for texture, depth, x0, y0, speed in objects:  # far to near: nearer ones move more with the camera
                x = int((x0 - pan_x * depth + speed * t) % (width + texture.shape[1])) - texture.shape[1]
                y = int(y0 - pan_y * depth)
                xs, xe = max(0, x), min(width, x + texture.shape[1])
                ys, ye = max(0, y), min(height, y + texture.shape[0])
                if xe > xs and ye > ys:
                    frame[ys:ye, xs:xe] = texture[ys - y:ye - y, xs - x:xe - x]
            frame += rng.normal(0.0, 6.0, frame.shape).astype(np.float32)  # grain
            writer.write(np.clip(frame, 0, 255).astype(np.uint8), index)
    return path


def best_of(runs: int, fn) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def real_clip(name: str = REAL_CLIP) -> Path | None:
    """A real clip from ``scripts/fetch-real-data`` (None without it)."""
    from real_data import real_clips  # bench/real_data.py, beside this script

    return next((clip for clip in real_clips() if clip.name == name), None)


def bench_convert_vs_transcode(work: Path, seconds: float, runs: int, clip: str = "layered") -> dict | None:
    if clip == "detailed":
        src = write_detailed_clip(work / "720p-detailed.mp4", seconds)
    elif clip == "real":
        src = real_clip()
        if src is None:
            return None
    else:
        src = write_sample(work / "720p.mp4", seconds=seconds, size=(1280, 720), fps=30)
    video = probe(src).video
    frames = video.frame_count or int(seconds * 30)
    settings = ConversionSettings(output_format=OutputFormat.SBS)
    base, conv = [], []
    for _ in range(runs):  # interleaved, so drift hits both alike
        base.append(best_of(1, lambda: plain_transcode(src, work / "plain.mp4")))
        conv.append(best_of(1, lambda: convert_segment(src, work / "sbs.mp4", settings)))
    profile = cProfile.Profile()
    profile.enable()
    convert_segment(src, work / "sbs.mp4", settings)
    profile.disable()
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(14)
    return {"frames": frames, "size": f"{video.width}x{video.height}", "source": src.name,
            "plain_fps": frames / min(base), "convert_fps": frames / min(conv),
            "ratio": min(base) / min(conv), "profile": text.getvalue()}


def _cli(args: list[str], home: Path, cores: set[int] | None = None) -> tuple[float, int]:
    """Run the CLI in a fresh process (on ``cores`` if given); return (seconds, its peak RSS in KiB).

    The peak is VmHWM, read by the process itself: unlike ru_maxrss it does not count the memory of the
    (large) benchmark process that forked it before exec."""
    env = {**os.environ, "STEREO_SPOT_HOME": str(home), "STORAGE_ADAPTER": "local"}
    code = (
        "import sys\n"
        "from stereo_spot.cli.main import app\n"
        "try:\n    app(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
        "print('PEAK', hwm, file=sys.stderr)\n"
    )
    pin = (lambda: os.sched_setaffinity(0, cores)) if cores else None
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True,
                          preexec_fn=pin)
    elapsed = time.perf_counter() - started
    peak = [int(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("PEAK")]
    if proc.returncode != 0 or not peak or not Path(args[args.index("-o") + 1]).is_file():
        raise RuntimeError(f"convert failed: {proc.stderr[-2000:]}")
    return elapsed, peak[0]


def bench_workers(work: Path, seconds: float, runs: int) -> dict:
    src = write_sample(work / "workers.mp4", seconds=seconds, size=(640, 360), fps=30)
    times: dict[str, list[float]] = {"one": [], "two": [], "one_core": []}
    for run in range(runs):  # interleaved
        for name, workers, cores in (("one", 1, None), ("two", 2, None), ("one_core", 1, {0})):
            out = work / f"{name}.mp4"
            elapsed, _ = _cli(["convert", str(src), "-o", str(out), "--workers", str(workers),
                               "--segment-seconds", str(seconds / 4)], work / f"home-{name}-{run}", cores)
            times[name].append(elapsed)
    best = {name: min(values) for name, values in times.items()}
    return {"one_worker_s": best["one"], "two_workers_s": best["two"], "one_core_s": best["one_core"],
            "speedup": best["one"] / best["two"], "scaling": best["one_core"] / best["two"]}


#: fixed single-threaded work for the machine's own scaling ceiling: a pure-Python loop (the core alone) and
#: frame-sized tensor arithmetic (the core with its caches and memory bandwidth, as a conversion uses them)
_CEILING_WORK = {
    "python loop": "x = 0\nfor i in range(12_000_000):\n    x += i * i % 7",
    "720p tensor work": (
        "import torch\ntorch.set_num_threads(1)\n"
        "a = torch.rand(1, 3, 720, 1280)\ng = torch.rand(1, 720, 1280, 2) * 2 - 1\n"
        "for _ in range(40):\n"
        "    b = torch.nn.functional.grid_sample(a, g, align_corners=True)\n"
        "    a = (a * 0.5 + b * 0.5).clamp_(0, 1)\n"
        "    a.sort(dim=-1)\n"),
}


def _pinned_seconds(code: str, cores: list[int]) -> float:
    """Run ``code`` in one process per core in ``cores``, all at once; the slowest one's seconds."""
    started = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", code], preexec_fn=lambda c=core: os.sched_setaffinity(0, {c}))
             for core in cores]
    for proc in procs:
        if proc.wait() != 0:
            raise RuntimeError("the ceiling workload failed")
    return time.perf_counter() - started


def bench_ceiling(runs: int) -> dict[str, float]:
    """What 2 processes on 2 cores give over 1 on 1 core for work that shares nothing: the most any pipeline
    can scale here (a VM's two vCPUs may be one physical core's two hyperthreads, or share its memory)."""
    cores = sorted(os.sched_getaffinity(0))[:2]
    if len(cores) < 2:
        return {}
    ceiling = {}
    for name, code in _CEILING_WORK.items():
        one = min(_pinned_seconds(code, cores[:1]) for _ in range(runs))
        two = min(_pinned_seconds(code, cores) for _ in range(runs))
        ceiling[name] = 2 * one / two
    return ceiling


def bench_memory(work: Path, seconds: float) -> dict:
    peaks = {}
    for scale in (1, 10):
        src = write_sample(work / f"mem{scale}.mp4", seconds=seconds * scale, size=(320, 180), fps=24)
        _, peaks[scale] = _cli(["convert", str(src), "-o", str(work / f"mem{scale}-3d.mp4"), "--workers", "1",
                                "--segment-seconds", "2"], work / f"home-mem{scale}")
    return {"peak_1x_mib": peaks[1] / 1024, "peak_10x_mib": peaks[10] / 1024, "growth": peaks[10] / peaks[1] - 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=6.0, help="length of the 720p clip")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="shorter clips, one run (a smoke test)")
    parser.add_argument("--clips", default="layered,detailed,real",
                        help="which clips part 1 converts: the 720p layered and detailed scenes, and real footage")
    parser.add_argument("--parts", default="1,2,3", help="which parts to run")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.runs = 2.0, 1
    print(f"cores: {len(os.sched_getaffinity(0))}  python: {sys.version.split()[0]}", flush=True)
    with tempfile.TemporaryDirectory(prefix="stereo-spot-bench-") as tmp:
        work = Path(tmp)
        results: dict = {}
        parts = set(args.parts.split(","))
        profile = ""
        for clip in args.clips.split(",") if "1" in parts else []:
            convert = bench_convert_vs_transcode(work, args.seconds, args.runs, clip)
            if convert is None:
                print(f"\n1. {clip} clip: no real data (run scripts/fetch-real-data)")
                continue
            profile = convert.pop("profile")
            results[f"convert_{clip}"] = convert
            width, height = (int(n) for n in convert["size"].split("x"))
            print(f"\n1. convert {convert['size']} → Full SBS {2 * width}x{height} (heuristic depth, defaults), "
                  f"{clip} clip ({convert['source']}), {convert['frames']} frames")
            print(f"   plain decode→encode      {convert['plain_fps']:7.2f} fps")
            print(f"   stereo-spot convert      {convert['convert_fps']:7.2f} fps")
            print(f"   ratio                    {convert['ratio']:7.2f}   (target >= 0.50)", flush=True)
        if "2" in parts:
            workers = results["workers"] = bench_workers(work, 4 * args.seconds, args.runs)
            print(f"\n2. whole pipeline, 640x360, {4 * args.seconds:.0f} s in 4 segments")
            print(f"   1 worker                 {workers['one_worker_s']:7.2f} s")
            print(f"   2 workers                {workers['two_workers_s']:7.2f} s")
            print(f"   speedup                  {workers['speedup']:7.2f}x  (target >= 1.70x)")
            print(f"   1 worker pinned to 1 core {workers['one_core_s']:6.2f} s  → 2 workers on 2 cores scale "
                  f"{workers['scaling']:.2f}x  (target >= 1.50x)", flush=True)
            ceiling = results["ceiling"] = bench_ceiling(args.runs)
            for name, value in ceiling.items():
                print(f"   this machine's ceiling, 2 processes on 2 cores vs 1 on 1 core, {name}: {value:.2f}x")
        if "3" in parts:
            memory = results["memory"] = bench_memory(work, max(2.0, args.seconds / 2))
            print("\n3. peak RSS, 320x180, 1x vs 10x the length")
            print(f"   1x                       {memory['peak_1x_mib']:7.1f} MiB")
            print(f"   10x                      {memory['peak_10x_mib']:7.1f} MiB")
            print(f"   growth                   {100 * memory['growth']:+7.1f} %  (target < +10 %)")
        if profile:
            print("\nprofile of one convert of the last clip (top functions by own time):")
            print(profile)
        if args.json:
            print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
