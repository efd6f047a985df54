"""Contact sheets: real pages decoded back, tiles where they should be, paging, compare mode."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import cli
from test_export import completed_records, make_batch


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("contact")
    names = [f"c{k:02d}.png" for k in range(11)] + ["ünï cödé.jpg", "new\nline.jpg"]
    home, out, st = make_batch(tmp, names, name="sheet", pipeline="resize 96x96 | convert webp", bad=2)
    return home, out, st


def test_cli_contact_sheet_one_page(batch, tmp_path):
    from batchcli.results.contact import BG, FAIL_BG, default_layout

    home, _, st = batch
    f = tmp_path / "sheet.jpg"
    r = cli("export", "sheet", "--contact-sheet", str(f), home=home)
    assert r.returncode == 0, r.stderr
    assert f"contact sheet of {st['completed'] + st['failed']} items (2 failed)" in r.stdout
    img = cv2.imread(str(f))
    lay = default_layout(False)
    w, h = lay.page_size(-(-15 // lay.cols))
    assert img.shape[:2] == (h, w)
    # the page background is the neutral colour; the first tiles are the failed ones (items 0, 1)
    assert np.abs(img[2, 2].astype(int) - BG[::-1]).max() < 8
    x, y = lay.gap + 6 + 4, lay.header + lay.gap + 6 + 4
    assert np.abs(img[y, x].astype(int) - FAIL_BG[::-1]).max() < 12
    # a completed tile has picture content (not one flat letterbox colour)
    x3 = lay.gap + 2 * (lay.tile_w + lay.gap) + 6
    box = img[y - 4:y - 4 + lay.thumb, x3:x3 + lay.thumb]
    assert box.std() > 10


def test_pages_and_compare(batch, tmp_path):
    from batchcli.engine.store import Store
    from batchcli.results.contact import Layout, render_contact_sheet

    home, _, st = batch
    paths = Store(str(home)).resolve("sheet")
    lay = Layout(thumb=64, cols=3, rows=2, compare=True)
    res = render_contact_sheet(paths, str(tmp_path / "cmp.png"), compare=True, layout=lay)
    n = st["completed"] + st["failed"]
    assert len(res.pages) == -(-n // 6) == 3
    assert [p.rsplit("/", 1)[1] for p in res.pages] == ["cmp-1.png", "cmp-2.png", "cmp-3.png"]
    assert res.tiles == n and res.failed == 2 and res.missing == 0
    full = cv2.imread(res.pages[0])
    last = cv2.imread(res.pages[-1])
    assert full.shape[1] == lay.page_size(2)[0] and full.shape[0] == lay.page_size(2)[1]
    assert last.shape[0] == lay.page_size(1)[0] or last.shape[0] == lay.page_size(1)[1]


def test_missing_output_is_a_labelled_tile(tmp_path):
    from batchcli.results.contact import MISS_BG, default_layout

    home, out, _ = make_batch(tmp_path, ["m0.png", "m1.png"], name="miss", bad=0)
    recs = completed_records(home)
    (out / recs[0]["out"]).unlink()
    f = tmp_path / "s.jpg"
    r = cli("export", "miss", "--contact-sheet", str(f), home=home)
    assert r.returncode == 0 and "1 missing" in r.stdout
    lay = default_layout(False)
    img = cv2.imread(str(f))
    y, x = lay.header + lay.gap + 10, lay.gap + 10
    assert np.abs(img[y, x].astype(int) - MISS_BG[::-1]).max() < 12


def test_contact_sheet_needs_an_image_name(batch, tmp_path):
    home, _, _ = batch
    r = cli("export", "sheet", "--contact-sheet", str(tmp_path / "s.gif"), home=home)
    assert r.returncode == 2 and ".jpg" in r.stderr
    r = cli("export", "sheet", "--zip", str(tmp_path / "z.zip"), "--compare", home=home)
    assert r.returncode == 2 and "--contact-sheet" in r.stderr
