"""Decoder noise: libpng and libjpeg warnings never reach the terminal raw; they are recorded with
the item (`warnings`), and a warning never fails an item. Real decoders, real files."""

from __future__ import annotations

import json
import struct

import pytest
from conftest import cli, make_image
from crashops import records


@pytest.fixture
def noisy(tmp_path):
    folder = tmp_path / "in"
    png = make_image(folder / "badcrc.png", 32, 24).read_bytes()
    body = b"Comment\x00hello"  # an ancillary chunk with a wrong CRC: libpng warns and skips it
    chunk = struct.pack(">I", len(body)) + b"tEXt" + body + struct.pack(">I", 12345)
    (folder / "badcrc.png").write_bytes(png[:33] + chunk + png[33:])
    jpg = make_image(folder / "extra.jpg", 32, 24).read_bytes()
    (folder / "extra.jpg").write_bytes(jpg[:-2] + b"\0\0\0" + jpg[-2:])  # junk before EOI: libjpeg warns
    make_image(folder / "clean.png", 32, 24)
    return folder


NOISE = ("libpng", "Corrupt JPEG", "CRC error", "extraneous bytes")


def test_decoder_warnings_go_into_the_item_record(noisy, tmp_path):
    home = tmp_path / "home"
    r = cli("start", str(noisy), "--out", str(tmp_path / "out"), "--pipeline", "convert png", home=home)
    assert r.returncode == 0, r.stderr  # a warning never fails an item
    for word in NOISE:
        assert word not in r.stdout + r.stderr
    batch = next((home / "batches").iterdir())
    done = {r["i"]: r for r in records(batch / "journal.jsonl") if r["type"] == "item_completed"}
    items = {json.loads(ln)["rel"]: json.loads(ln)["i"] for ln in (batch / "items.jsonl").read_text().splitlines()}
    assert done[items["badcrc.png"]]["warnings"] == ["libpng warning: tEXt: CRC error"]
    assert any("extraneous bytes before marker" in w for w in done[items["extra.jpg"]]["warnings"])
    assert "warnings" not in done[items["clean.png"]]
    rows = json.loads(cli("status", "--items", "--json", home=home).stdout)["items"]
    assert [bool(row.get("warnings")) for row in sorted(rows, key=lambda x: x["src"])] == [True, False, True]
    r = cli("export", batch.name, "--contact-sheet", str(tmp_path / "sheet.jpg"), "--compare", home=home)
    assert r.returncode == 0, r.stderr
    for word in NOISE:
        assert word not in r.stdout + r.stderr
