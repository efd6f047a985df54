"""Contact sheets: pages of letterboxed thumbnails with captions, drawn with OpenCV and numpy.

Every tile has the same size. Completed items show their output (or, with `compare`, the source
and the output side by side); failed items and outputs that went missing are labelled tiles.
Each page has a header with the batch's name, id, counts and page number. Text is drawn with
Pillow's FreeType renderer (a system sans font when one is installed, Pillow's own otherwise).
Pages are written atomically: FILE.jpg for one page, FILE-1.jpg, FILE-2.jpg ... for more.
"""

from __future__ import annotations

import os
import time
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from batchcli.atomic import atomic_write
from batchcli.engine.store import BatchPaths
from batchcli.errors import ConfigError, NothingToExport
from batchcli.imaging.noise import silenced
from batchcli.results.dest import check_file_target
from batchcli.results.snapshot import ItemView, Snapshot

# Colours are RGB (the page is converted to BGR once, before encoding).
BG = (30, 31, 34)
TILE = (43, 45, 49)
LETTERBOX = (56, 58, 63)
CHECK = ((72, 74, 80), (92, 94, 100))  # transparency checkerboard
TEXT = (232, 232, 232)
DIM = (150, 155, 162)
FAIL_BG, FAIL_TEXT, FAIL_DETAIL = (74, 31, 34), (255, 118, 118), (230, 186, 186)
MISS_BG, MISS_TEXT = (72, 56, 22), (255, 196, 84)

FORMATS = {".jpg": [cv2.IMWRITE_JPEG_QUALITY, 90], ".jpeg": [cv2.IMWRITE_JPEG_QUALITY, 90],
           ".png": [cv2.IMWRITE_PNG_COMPRESSION, 6], ".webp": [cv2.IMWRITE_WEBP_QUALITY, 90]}

_FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "/Library/Fonts", "/System/Library/Fonts",
              "C:\\Windows\\Fonts")
_FONT_NAMES = {"regular": ("DejaVuSans.ttf", "NotoSans-Regular.ttf", "Arial.ttf", "arial.ttf"),
               "bold": ("DejaVuSans-Bold.ttf", "NotoSans-Bold.ttf", "Arial Bold.ttf", "arialbd.ttf")}


@dataclass(frozen=True)
class Layout:
    thumb: int = 180  # the square box each image is letterboxed into
    cols: int = 8
    rows: int = 10
    gap: int = 14
    caption: int = 40
    header: int = 78
    compare: bool = False

    @property
    def box_w(self) -> int:  # image area of a tile
        return self.thumb * 2 + 6 if self.compare else self.thumb

    @property
    def tile_w(self) -> int:
        return self.box_w + 12

    @property
    def tile_h(self) -> int:
        return self.thumb + 12 + self.caption

    @property
    def per_page(self) -> int:
        return self.cols * self.rows

    def page_size(self, n_rows: int) -> tuple[int, int]:
        w = self.cols * self.tile_w + (self.cols + 1) * self.gap
        h = self.header + n_rows * self.tile_h + (n_rows + 1) * self.gap
        return w, h


def default_layout(compare: bool) -> Layout:
    return Layout(thumb=160, cols=5, rows=10, compare=True) if compare else Layout()


@dataclass
class ContactResult:
    batch_id: str
    pages: list[str] = field(default_factory=list)
    tiles: int = 0
    completed: int = 0
    failed: int = 0
    missing: int = 0
    running: bool = False
    snapshot_at: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        from batchcli.results.export import _iso

        return {**self.__dict__, "snapshot_at": _iso(self.snapshot_at)}


@dataclass
class Tile:
    item: ItemView
    kind: str  # "image", "failed", "missing"
    after: np.ndarray | None = None  # RGB(A) thumbnails, already fitted to the box
    before: np.ndarray | None = None
    detail: str = ""
    name: str = ""  # the output shown (its path below the output folder), when there is one


def page_paths(path: str, pages: int) -> list[str]:
    if pages <= 1:
        return [path]
    stem, ext = os.path.splitext(path)
    return [f"{stem}-{k}{ext}" for k in range(1, pages + 1)]


def render_contact_sheet(paths: BatchPaths, out_file: str, compare: bool = False,
                         layout: Layout | None = None, snapshot: Snapshot | None = None,
                         threads: int | None = None) -> ContactResult:
    ext = os.path.splitext(out_file)[1].lower()
    if ext not in FORMATS:
        raise ConfigError(f"--contact-sheet {out_file}: the name must end in .jpg, .png or .webp")
    snap = snapshot or Snapshot(paths)
    st = snap.replay
    if st.completed == 0:
        raise NothingToExport(f"no completed results to export (batch {paths.id}: "
                              f"{st.failed} failed, {st.remaining} pending)")
    lay = layout or default_layout(compare)
    n_tiles = st.completed + st.failed
    n_pages = max(1, -(-n_tiles // lay.per_page))
    targets = page_paths(os.path.abspath(out_file), n_pages)
    for target in targets:
        check_file_target(paths, "--contact-sheet", target)
    res = ContactResult(batch_id=paths.id, running=snap.running, snapshot_at=snap.taken_at)
    fonts = _Fonts()
    limits = limits_of(snap.manifest)
    pool = ThreadPoolExecutor(max_workers=threads or min(4, os.cpu_count() or 1))
    try:
        page: list[ItemView] = []
        k = 0

        def flush() -> None:
            nonlocal k
            with silenced():  # decoder warnings (libpng, libjpeg) never reach the terminal
                tiles = list(pool.map(lambda it: _load_tile(snap, it, lay, limits), page))
            for t in tiles:
                res.tiles += 1
                if t.kind == "failed":
                    res.failed += 1
                elif t.kind == "missing":
                    res.missing += 1
                else:
                    res.completed += 1
            img = _draw_page(snap, tiles, lay, fonts, k + 1, n_pages)
            ok, buf = cv2.imencode(ext, cv2.cvtColor(img, cv2.COLOR_RGB2BGR), FORMATS[ext])
            if not ok:
                raise ConfigError(f"cannot encode {ext} with this OpenCV build")
            os.makedirs(os.path.dirname(targets[k]), exist_ok=True)
            atomic_write(targets[k], buf.tobytes())
            res.pages.append(targets[k])
            k += 1
            page.clear()

        for item in snap:
            if item.state not in ("completed", "failed"):
                continue
            page.append(item)
            if len(page) == lay.per_page and k < n_pages - 1:
                flush()
        if page or k < n_pages:
            flush()
    finally:
        pool.shutdown(wait=True)
    return res


# --------------------------------------------------------------------------------------------
# Loading thumbnails.


def limits_of(manifest: dict[str, Any]):
    from batchcli.imaging.headers import given_limits
    from batchcli.imaging.imageio import Limits

    opts = manifest.get("options") or {}
    return Limits(int(opts.get("max_file_size", 200 << 20)), int(opts.get("max_pixels", 150_000_000)),
                  given_limits(manifest.get("limits_given")))


def _load_tile(snap: Snapshot, item: ItemView, lay: Layout, limits) -> Tile:
    box = lay.thumb
    before, src_size = thumbnail(item.src, box, limits) if lay.compare else (None, None)
    if item.state == "failed":
        return Tile(item, "failed", before=before, detail=_error_text(item.record or {}))
    outputs = snap.outputs(item)  # with variants: the chosen one's, else the first variant's
    rec = outputs[0] if outputs else item.record or {}
    if len(outputs) > 1 and ((item.record or {}).get("meta") or {}).get("video"):  # a video's stills: a strip
        paths = [os.path.join(snap.out_dir, o["out"]) for o in _spread(outputs, STRIP)]  # type: ignore[arg-type]
        frames = [f for f in (_decode_still(p, limits) for p in paths) if f is not None]
        after = _strip(frames, box)
        if after is None:
            return Tile(item, "missing", before=before, detail="stills are missing", name=rec["out"])
        return Tile(item, "image", after=after, before=before, name=os.path.dirname(rec["out"]),
                    detail=f"#{item.i}  {len(outputs)} stills")
    if outputs:
        out_path = os.path.join(snap.out_dir, rec["out"])  # type: ignore[arg-type]
        if not os.path.exists(out_path):
            return Tile(item, "missing", before=before, detail="output file is missing", name=rec["out"])
        after, size = thumbnail(out_path, box, limits)
    else:  # a pipeline that writes no image: show the source
        after, size = thumbnail(item.src, box, limits)
    detail = f"#{item.i}"
    if size and src_size and src_size != size:
        detail += f"  {src_size[0]}\u00d7{src_size[1]} \u2192 {size[0]}\u00d7{size[1]}"
    elif size:
        detail += f"  {size[0]}\u00d7{size[1]}"
    if rec.get("bytes"):
        detail += f"  {_fmt_bytes(int(rec['bytes']))}"
    return Tile(item, "image", after=after, before=before, detail=detail, name=rec.get("out") or "")


STRIP = 4
"""Frames in a video's strip on a contact sheet."""


def _spread(seq: list, n: int) -> list:
    """n entries spread evenly over seq (all of them when it has no more)."""
    if len(seq) <= n:
        return list(seq)
    return [seq[round(k * (len(seq) - 1) / (n - 1))] for k in range(n)]


def _decode_still(path: str, limits) -> np.ndarray | None:
    from batchcli.imaging import imageio

    try:
        return imageio.to_uint8(imageio.upright(imageio.load(path, limits)).img)
    except Exception:
        return None


def _strip(frames: list[np.ndarray], box: int) -> np.ndarray | None:
    """Frames (BGR) side by side, as one RGB thumbnail that fits box x box."""
    if not frames:
        return None
    h = min(f.shape[0] for f in frames)
    row = [cv2.resize(f[:, :, :3] if f.ndim == 3 else cv2.cvtColor(f, cv2.COLOR_GRAY2BGR),
                      (max(1, round(f.shape[1] * h / f.shape[0])), h), interpolation=cv2.INTER_AREA) for f in frames]
    gap = np.full((h, max(1, h // 24), 3), LETTERBOX[::-1], np.uint8)
    strip = np.hstack([part for f in row for part in (f, gap)][:-1])
    scale = min(box / strip.shape[1], box / strip.shape[0], 2.0)
    size = (max(1, round(strip.shape[1] * scale)), max(1, round(strip.shape[0] * scale)))
    strip = cv2.resize(strip, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    return cv2.cvtColor(strip, cv2.COLOR_BGR2RGB)


def thumbnail(path: str, box: int, limits) -> tuple[np.ndarray | None, tuple[int, int] | None]:
    """Decode (reduced when the format allows), orient, fit into box x box. A video becomes a
    strip of frames spread over its length. Returns (RGB or RGBA uint8 thumbnail, the image's
    full size), or (None, None)."""
    from batchcli.imaging import imageio
    from batchcli.inputs.discover import is_video

    if path.startswith(("http://", "https://")):
        return None, None
    if is_video(path):
        from batchcli.video.stills import sample_frames

        frames = sample_frames(path, STRIP)
        return _strip(frames, box), ((frames[0].shape[1], frames[0].shape[0]) if frames else None)

    def shrink(w: int, h: int) -> int:
        f = 1
        while f < 8 and max(w, h) // (f * 2) >= box * 2:
            f *= 2
        return f

    try:
        frame = imageio.load(path, limits, shrink)
    except Exception:
        return None, None
    # the size as stored (a reduced decode of an odd size cannot give it back), shown upright
    full = frame.src_size if all(frame.src_size) else (frame.img.shape[1] * frame.shrink, frame.img.shape[0] * frame.shrink)
    if frame.orientation in (5, 6, 7, 8):
        full = (full[1], full[0])
    frame = imageio.upright(frame)
    img = imageio.to_uint8(frame.img)
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA)
    else:
        img = cv2.cvtColor(img[:, :, :3], cv2.COLOR_BGR2RGB)
    h, w = img.shape[:2]
    scale = min(box / max(w, h), 2.0)  # fit; small images grow at most 2x
    tw, th = max(1, round(w * scale)), max(1, round(h * scale))
    if (tw, th) != (w, h):
        img = cv2.resize(img, (tw, th), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    return img, full


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


def _error_text(rec: dict[str, Any]) -> str:
    msg = rec.get("error") or ""
    if ": " in msg:  # "src: reason" -> the reason
        msg = msg.split(": ", 1)[1]
    return msg


# --------------------------------------------------------------------------------------------
# Drawing.


class _Fonts:
    def __init__(self) -> None:
        self.caption = _font("regular", 13)
        self.small = _font("regular", 12)
        self.label = _font("bold", 15)
        self.title = _font("bold", 22)
        self.sub = _font("regular", 14)


def _font(kind: str, size: int):
    from PIL import ImageFont

    for d in _FONT_DIRS:
        for name in _FONT_NAMES[kind]:
            for sub in ("", "truetype/dejavu", "truetype/noto", "TTF", "dejavu"):
                p = os.path.join(d, sub, name)
                if os.path.isfile(p):
                    try:
                        return ImageFont.truetype(p, size)
                    except OSError:
                        continue
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the bitmap font
        return ImageFont.load_default()


def _clean(text: str) -> str:
    text = unicodedata.normalize("NFC", text)
    return "".join("\u00b7" if unicodedata.category(c)[0] == "C" else c for c in text)


def _fit(draw, text: str, font, width: int) -> str:
    """Shorten with a middle ellipsis (the extension stays visible)."""
    text = _clean(text)
    if draw.textlength(text, font=font) <= width:
        return text
    lo, hi = 0, len(text)
    best = "\u2026"
    while lo <= hi:
        mid = (lo + hi) // 2
        head = text[: (mid + 1) // 2]
        tail = text[len(text) - mid // 2:] if mid // 2 else ""
        cand = head + "\u2026" + tail
        if draw.textlength(cand, font=font) <= width:
            best, lo = cand, mid + 1
        else:
            hi = mid - 1
    return best


def _wrap(draw, text: str, font, width: int, lines: int) -> list[str]:
    words, out, cur = _clean(text).split(), [], ""
    for w in words:
        cand = f"{cur} {w}".strip()
        if draw.textlength(cand, font=font) <= width:
            cur = cand
            continue
        if cur:
            out.append(cur)
        cur = w
        if len(out) == lines:
            break
    if cur and len(out) < lines:
        out.append(cur)
    out = out[:lines]
    if out:
        out[-1] = _fit(draw, out[-1], font, width)
    return out


def _paste(canvas: np.ndarray, thumb: np.ndarray, x: int, y: int, box_w: int, box_h: int) -> None:
    """Letterbox `thumb` centred in the box at (x, y); alpha over a checkerboard."""
    th, tw = thumb.shape[:2]
    ox, oy = x + (box_w - tw) // 2, y + (box_h - th) // 2
    region = canvas[oy:oy + th, ox:ox + tw]
    if thumb.shape[2] == 4:
        yy, xx = np.mgrid[0:th, 0:tw]
        checker = np.where(((yy // 8 + xx // 8) % 2)[..., None] == 0, CHECK[0], CHECK[1]).astype(np.float32)
        a = thumb[:, :, 3:4].astype(np.float32) / 255.0
        region[:] = (thumb[:, :, :3].astype(np.float32) * a + checker * (1 - a) + 0.5).astype(np.uint8)
    else:
        region[:] = thumb


def _draw_page(snap: Snapshot, tiles: list[Tile], lay: Layout, fonts: _Fonts, page: int, pages: int) -> np.ndarray:
    from PIL import Image, ImageDraw

    n_rows = max(1, -(-len(tiles) // lay.cols))
    W, H = lay.page_size(n_rows)
    canvas = np.empty((H, W, 3), np.uint8)
    canvas[:] = BG
    places = []
    for idx, t in enumerate(tiles):
        r, c = divmod(idx, lay.cols)
        x = lay.gap + c * (lay.tile_w + lay.gap)
        y = lay.header + lay.gap + r * (lay.tile_h + lay.gap)
        places.append((x, y))
        canvas[y:y + lay.tile_h, x:x + lay.tile_w] = TILE
        bx, by = x + 6, y + 6
        halves = ([(bx, t.before), (bx + lay.thumb + 6, t.after)] if lay.compare else [(bx, t.after)])
        for k, (hx, thumb) in enumerate(halves):
            failed_half = t.kind != "image" and (not lay.compare or k == 1)
            colour = FAIL_BG if t.kind == "failed" and failed_half else MISS_BG if failed_half else LETTERBOX
            canvas[by:by + lay.thumb, hx:hx + lay.thumb] = colour
            if thumb is not None and not failed_half:
                _paste(canvas, thumb, hx, by, lay.thumb, lay.thumb)
    img = Image.fromarray(canvas)
    draw = ImageDraw.Draw(img)
    _draw_header(draw, snap, lay, fonts, W, page, pages, len(tiles))
    for t, (x, y) in zip(tiles, places):
        bx, by = x + 6, y + 6
        if lay.compare:
            for k, label in enumerate(("before", "after")):
                lx = bx + k * (lay.thumb + 6) + 5
                draw.rounded_rectangle([lx - 3, by + 4, lx + draw.textlength(label, font=fonts.small) + 4, by + 21],
                                       radius=4, fill=(20, 21, 24))
                draw.text((lx, by + 6), label, font=fonts.small, fill=DIM)
            if t.before is None:
                _centre(draw, "source unavailable", fonts.small, DIM, bx, by, lay.thumb, lay.thumb)
        hx = bx + (lay.thumb + 6 if lay.compare else 0)
        if t.kind == "failed":
            cls = ((t.item.record or {}).get("error_class") or "error").upper()
            _centre(draw, "FAILED", fonts.label, FAIL_TEXT, hx, by + lay.thumb // 2 - 40, lay.thumb, 20)
            _centre(draw, cls, fonts.caption, FAIL_DETAIL, hx, by + lay.thumb // 2 - 16, lay.thumb, 16)
            for n, line in enumerate(_wrap(draw, t.detail, fonts.small, lay.thumb - 16, 3)):
                _centre(draw, line, fonts.small, FAIL_DETAIL, hx, by + lay.thumb // 2 + 8 + n * 16, lay.thumb, 16)
        elif t.kind == "missing":
            _centre(draw, "MISSING", fonts.label, MISS_TEXT, hx, by + lay.thumb // 2 - 22, lay.thumb, 20)
            _centre(draw, "output file is gone", fonts.small, MISS_TEXT, hx, by + lay.thumb // 2 + 4, lay.thumb, 16)
        elif t.after is None:
            _centre(draw, "cannot preview", fonts.small, DIM, hx, by, lay.thumb, lay.thumb)
        name = t.name or t.item.out or t.item.rel
        cy = y + lay.thumb + 12
        draw.text((x + 7, cy), _fit(draw, name, fonts.caption, lay.tile_w - 14), font=fonts.caption, fill=TEXT)
        detail = t.detail if t.kind == "image" else f"#{t.item.i}  {_fit(draw, t.item.rel, fonts.small, lay.tile_w - 60)}"
        draw.text((x + 7, cy + 18), _fit(draw, detail, fonts.small, lay.tile_w - 14), font=fonts.small, fill=DIM)
    return np.asarray(img)


def _centre(draw, text: str, font, fill, x: int, y: int, w: int, h: int) -> None:
    text = _fit(draw, text, font, w - 8)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    draw.text((x + (w - (right - left)) // 2 - left, y + (h - (bottom - top)) // 2 - top), text, font=font, fill=fill)


def _draw_header(draw, snap: Snapshot, lay: Layout, fonts: _Fonts, width: int, page: int, pages: int,
                 n: int) -> None:
    st = snap.replay
    title = snap.manifest.get("name") or "batch"
    x = lay.gap + 2
    draw.text((x, 16), _fit(draw, title, fonts.title, width // 2), font=fonts.title, fill=TEXT)
    tx = x + draw.textlength(_fit(draw, title, fonts.title, width // 2), font=fonts.title) + 14
    draw.text((tx, 24), snap.paths.id, font=fonts.sub, fill=DIM)
    parts = [f"{st.completed} completed", f"{st.failed} failed"]
    if st.remaining:
        parts.append(f"{st.remaining} pending")
    if st.skipped:
        parts.append(f"{st.skipped} skipped")
    parts.append(f"of {snap.total}")
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(snap.taken_at))
    line = "  \u00b7  ".join(parts) + (f"  \u00b7  running, as of {when}" if snap.running else "")
    pipe = snap.manifest.get("pipeline_text") or ""
    draw.text((x, 48), _fit(draw, line + (f"  \u00b7  {pipe}" if pipe else ""), fonts.sub, width - 260),
              font=fonts.sub, fill=DIM)
    right = f"page {page} of {pages}"
    draw.text((width - lay.gap - 2 - draw.textlength(right, font=fonts.sub), 24), right, font=fonts.sub, fill=DIM)
    draw.line([(lay.gap, lay.header - 4), (width - lay.gap, lay.header - 4)], fill=(60, 62, 68), width=1)
