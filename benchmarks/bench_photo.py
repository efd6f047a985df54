"""Photo benchmarks: what keeping metadata costs on thumbnails, RAW thumbnails from the
embedded preview against a full demosaic, and four variants from one decode against four
batches of one variant each. Prints a table; compares ratios from one run.

    .venv/bin/python benchmarks/bench_photo.py [--photos 12] [--raws 6] [--rounds 3] [--variant-photos 6]

Each figure runs the worker's own steps in this process (decode, pipeline, encode, durable
write), one image at a time; the two sides of a ratio alternate image by image and each image
counts with its best time over the rounds, so a machine busy with other work weighs on both alike.
The variant rows run the real Worker (the one batch: one Worker with the four variants; the
four batches: four Workers of one pipeline each, every one decoding the photo itself); a batch's
start-up (discovery, worker processes, about 0.5 s each) is left out, which favours the four
batches.
"""

from __future__ import annotations

import argparse
import io
import pickle
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / "work" / "photo"
sys.path.insert(0, str(ROOT))

from batchcli.imaging import imageio  # noqa: E402
from batchcli.pipeline import Pipeline  # noqa: E402


def make_photos(n: int) -> list[Path]:
    """12 MP camera JPEGs with EXIF, IPTC, XMP, an EXIF thumbnail and a ProPhoto profile."""
    import cv2
    import numpy as np

    from tests.photos import photographer_jpeg

    out = []
    for k in range(n):
        path = WORK / "jpg" / f"p{k:03d}.jpg"
        if not path.exists():
            photographer_jpeg(path, 4000, 3000)
            img = cv2.imread(str(path))  # add texture: a smooth gradient compresses unrealistically well
            noise = np.random.default_rng(k).integers(-12, 12, img.shape, dtype=np.int16)
            ok, buf = cv2.imencode(".jpg", np.clip(img + noise, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 90])
            import pyexiv2

            with pyexiv2.ImageData(path.read_bytes()) as src, pyexiv2.ImageData(buf.tobytes()) as dst:
                src.copy_to_another_image(dst)
                path.write_bytes(dst.get_bytes())
        out.append(path)
    return out


def make_raws(n: int) -> list[Path]:
    """6000x4000 DNGs with a 1600x1067 embedded JPEG preview."""
    import numpy as np

    from tests.photos import photo_pixels
    from tests.test_raw import make_dng

    out = []
    for k in range(n):
        path = WORK / "raw" / f"r{k:03d}.dng"
        if not path.exists():
            preview = np.ascontiguousarray(photo_pixels(1600, 1067, seed=k)[:, :, ::-1])
            make_dng(path, 6000, 4000, rgb=(0.4, 0.3, 0.2), preview=preview)
        out.append(path)
    return out


def one(pipe: Pipeline, src: Path, dest: Path) -> float:
    """Seconds for one image through decode, pipeline, encode and durable write."""
    t0 = time.perf_counter()
    frame = pipe.run(imageio.load(str(src), shrink_for=pipe.shrink_for, raw=pipe.raw_settings))
    imageio.save(frame, str(dest))
    return time.perf_counter() - t0


def compare(files: list[Path], a: str, b: str, rounds: int) -> tuple[float, float]:
    """Seconds per image for pipelines a and b: each image's best time over `rounds`, a and b
    alternating image by image (a load spike from other work then costs one sample, not a side)."""
    pa, pb = Pipeline.parse(a), Pipeline.parse(b)
    dest = WORK / "out"
    dest.mkdir(parents=True, exist_ok=True)
    best_a = [float("inf")] * len(files)
    best_b = [float("inf")] * len(files)
    one(pa, files[0], dest / "warm")  # imports and first-use set-up
    one(pb, files[0], dest / "warm")
    for _ in range(rounds):
        for k, f in enumerate(files):
            best_a[k] = min(best_a[k], one(pa, f, dest / f"a{k:03d}"))
            best_b[k] = min(best_b[k], one(pb, f, dest / f"b{k:03d}"))
    return sum(best_a) / len(files), sum(best_b) / len(files)


VARIANT_SETS = {
    "a site's sizes, 2048/1280/640/320 px in JPEG and WebP": (
        "orient | profile srgb",
        ["w2048=resize 2048x2048 | convert jpg quality=85", "w1280=resize 1280x1280 | convert webp quality=80",
         "w640=resize 640x640 | convert webp quality=80", "w320=resize 320x320 | convert jpg quality=80"]),
    "four looks at 2048 px (templates)": (
        "orient | profile srgb | resize 2048x2048",
        [f"{look}=preset {look} | convert jpg quality=85" for look in ("warm", "cool", "mono", "vintage")]),
}
"""Four variants of each photo: the shared pipeline, then the variants (NAME=PIPELINE)."""


def _worker(pipe: Pipeline, out: Path):
    from batchcli.executors.worker import Worker, WorkerConfig

    out.mkdir(parents=True, exist_ok=True)
    return Worker(WorkerConfig(pipeline=pickle.dumps(pipe), out_dir=str(out), max_file_size=200 << 20,
                               max_pixels=150_000_000, extra={"variant_template": False}))


def variants_vs_batches(files: list[Path], shared: str, variants: list[str], rounds: int) -> tuple[float, float]:
    """Seconds per photo: one Worker writing the four variants from one decode, against four
    Workers of one variant each (shared ops included in each), alternating photo by photo."""
    branched = Pipeline.parse(shared)
    for flag in variants:
        branched.add_variant(*Pipeline.parse_variant(flag))
    one = _worker(branched, WORK / "variants")
    apart = [_worker(Pipeline.parse(f"{shared} | {flag.split('=', 1)[1]}"), WORK / f"apart-{k}")
             for k, flag in enumerate(variants)]

    def run(workers, k: int, f: Path) -> float:
        t0 = time.perf_counter()
        for w in workers:
            res = w.process({"i": k, "src": str(f), "stem": f.stem})
            assert res["ok"], res
        return time.perf_counter() - t0

    run([one], 0, files[0])  # imports and first-use set-up
    run(apart, 0, files[0])
    best_one = [float("inf")] * len(files)
    best_apart = [float("inf")] * len(files)
    for _ in range(rounds):
        for k, f in enumerate(files):
            best_one[k] = min(best_one[k], run([one], k, f))
            best_apart[k] = min(best_apart[k], run(apart, k, f))
    return sum(best_one) / len(files), sum(best_apart) / len(files)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=12)
    ap.add_argument("--raws", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variant-photos", type=int, default=6, help="photos for the variant rows (the slowest)")
    ap.add_argument("--only", choices=("metadata", "raw", "variants"), help="one group of rows")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    buf = io.StringIO()
    buf.write("| measure | per image | figure |\n|---|---|---|\n")
    if args.only in (None, "metadata"):
        photos = make_photos(args.photos)
        keep, strip = compare(photos, "resize 400x400 | convert jpg quality=85",
                              "metadata strip icc=drop | resize 400x400 | convert jpg quality=85", args.rounds)
        buf.write(f"| 12 MP JPEG thumbnails, metadata kept (default) vs none | {keep * 1000:.1f} ms vs {strip * 1000:.1f} ms "
                  f"| keeping costs {(keep / strip - 1) * 100:+.1f}% of throughput |\n")
    if args.only in (None, "raw"):
        raws = make_raws(args.raws)
        preview, full = compare(raws, "raw | resize 400x400 | convert jpg quality=85",
                                "raw preview=never | resize 400x400 | convert jpg quality=85", args.rounds)
        buf.write(f"| 24 MP DNG thumbnails, `raw preview=auto` vs full demosaic | {preview * 1000:.1f} ms vs {full * 1000:.1f} ms "
                  f"| {full / preview:.1f}x faster |\n")
    if args.only in (None, "variants"):
        photos = make_photos(args.variant_photos)
        for label, (shared, variants) in VARIANT_SETS.items():
            one, apart = variants_vs_batches(photos, shared, variants, args.rounds)
            buf.write(f"| 12 MP JPEGs, {label}: one batch of 4 variants vs 4 batches | {one * 1000:.0f} ms vs "
                      f"{apart * 1000:.0f} ms | {apart / one:.2f}x faster |\n")
    print(buf.getvalue(), end="")


if __name__ == "__main__":
    main()
