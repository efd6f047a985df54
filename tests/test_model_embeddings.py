"""Embedding store (append-only, torn-tail safe), near-duplicate groups and `batchcli similar`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchcli.models import embeddings as emb
from batchcli.models.embeddings import EmbeddingStore, LoadReport, near_duplicate_groups


def vec(*xs: float) -> list[float]:
    return [float(x) for x in xs]


def test_round_trip_and_last_record_wins(tmp_path):
    with EmbeddingStore(str(tmp_path)) as store:
        store.append(3, vec(1, 0, 0))
        store.append(1, vec(0, 1, 0))
        store.append(3, vec(0, 0, 1))  # item 3 redone after a resume
    report = LoadReport()
    ids, m = emb.load(str(tmp_path), report)
    assert ids.tolist() == [1, 3]
    assert m.tolist() == [[0, 1, 0], [0, 0, 1]]
    assert m.dtype == np.float32 and report.duplicates == 1
    assert json.loads((tmp_path / emb.HEADER).read_text())["dim"] == 3


def test_empty_batch_loads_empty(tmp_path):
    ids, m = emb.load(str(tmp_path))
    assert ids.shape == (0,) and m.shape == (0, 0)
    assert emb.export_npy(str(tmp_path)) is None


def test_dimension_is_fixed_by_the_first_vector(tmp_path):
    store = EmbeddingStore(str(tmp_path), durable=False)
    store.append(0, vec(1, 2))
    with pytest.raises(ValueError, match="has 3 values; this batch stores 2"):
        store.append(1, vec(1, 2, 3))
    store.close()
    with pytest.raises(ValueError):  # a reopened store remembers it
        EmbeddingStore(str(tmp_path)).append(2, vec(1))


def test_torn_tail_is_ignored_then_cut_before_the_next_append(tmp_path):
    with EmbeddingStore(str(tmp_path)) as s:
        s.append(0, vec(1, 2, 3))
        s.append(1, vec(4, 5, 6))
    data = tmp_path / emb.DATA
    whole = data.read_bytes()
    data.write_bytes(whole + whole[:9])  # a crash in the middle of the third record
    report = LoadReport()
    ids, _ = emb.load(str(tmp_path), report)
    assert ids.tolist() == [0, 1] and report.torn_bytes == 9
    with EmbeddingStore(str(tmp_path)) as s:
        s.append(2, vec(7, 8, 9))
    ids, m = emb.load(str(tmp_path))
    assert ids.tolist() == [0, 1, 2] and m[2].tolist() == [7, 8, 9]


def test_corrupt_record_is_skipped(tmp_path):
    with EmbeddingStore(str(tmp_path)) as s:
        for i in range(3):
            s.append(i, vec(i, i))
    data = tmp_path / emb.DATA
    raw = bytearray(data.read_bytes())
    raw[20 + 10] ^= 0xFF  # inside record 1's vector
    data.write_bytes(bytes(raw))
    report = LoadReport()
    ids, _ = emb.load(str(tmp_path), report)
    assert ids.tolist() == [0, 2] and report.bad_crc == 1


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 6), cut=st.integers(0, 6 * 24))
def test_any_cut_keeps_exactly_the_whole_records(tmp_path_factory, n, cut):
    d = tmp_path_factory.mktemp("cut")
    with EmbeddingStore(str(d), durable=False) as s:
        for i in range(n):
            s.append(i, vec(i, -i, 0.5))
    data = d / emb.DATA
    raw = data.read_bytes()
    cut = min(cut, len(raw))
    data.write_bytes(raw[:cut])
    ids, m = emb.load(str(d))
    assert ids.tolist() == list(range(cut // 24))
    assert m.shape == (cut // 24, 3)


def test_export_npy(tmp_path):
    with EmbeddingStore(str(tmp_path)) as s:
        s.append(5, vec(1, 2))
        s.append(2, vec(3, 4))
    mat_path, ids_path = emb.export_npy(str(tmp_path))
    assert np.load(mat_path).tolist() == [[3, 4], [1, 2]]
    assert np.load(ids_path).tolist() == [2, 5]


def test_groups_are_transitive_and_sorted():
    ids = np.array([10, 11, 12, 13, 14, 15])
    m = np.array([[1, 0, 0], [0.99, 0.14, 0], [0.96, 0.28, 0],  # a chain: 10-11-12
                  [0, 1, 0], [0, 0.999, 0.04],  # a pair: 13-14
                  [0, 0, 1]], np.float32)
    groups = near_duplicate_groups(ids, m, 0.98, block=2)
    assert [g.items for g in groups] == [[10, 11, 12], [13, 14]]
    assert groups[0].pairs == 2 and groups[0].min_similarity >= 0.98
    assert near_duplicate_groups(ids, m, 0.9999) == []
    assert [g.items for g in near_duplicate_groups(ids, m, 0.9, block=4)] == [[10, 11, 12], [13, 14]]


def test_similar_command(tmp_path):
    from typer.testing import CliRunner

    from batchcli.cli.app import app
    from batchcli.engine.store import Store

    home = tmp_path / "home"
    paths = Store(str(home)).create()
    paths.write_manifest({"name": "pics", "total": 4})
    with open(paths.items, "w") as fh:
        for i in range(4):
            fh.write(json.dumps({"i": i, "src": f"/in/{i}.jpg", "rel": f"{i}.jpg"}) + "\n")
    with EmbeddingStore(paths.dir) as s:
        for i, v in enumerate([vec(1, 0), vec(1, 0.01), vec(0, 1), vec(-1, 0)]):
            s.append(i, v)
    open(paths.journal, "w").close()
    paths.created()  # a whole batch (a half-made one is refused as damaged)
    runner = CliRunner()
    r = runner.invoke(app, ["similar", "pics", "--threshold", "0.99", "--json", "--home", str(home)],
                      catch_exceptions=False)
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["count"] == 1 and data["items"] == 4
    assert data["groups"][0]["items"] == [{"i": 0, "src": "/in/0.jpg"}, {"i": 1, "src": "/in/1.jpg"}]
    r = runner.invoke(app, ["similar", "pics", "--home", str(home)], catch_exceptions=False)
    assert r.exit_code == 0 and "/in/1.jpg" in r.output and "1 group(s) among 4" in r.output
    r = runner.invoke(app, ["similar", "nope", "--home", str(home)])
    assert r.exit_code == 2
    other = Store(str(home)).create()  # a batch without vectors: nothing to group, exit 1 as for export
    other.write_manifest({"name": "novec", "total": 0})
    for path in (other.items, other.journal):
        open(path, "w").close()
    other.created()
    for extra in ([], ["--json"]):
        r = runner.invoke(app, ["similar", "novec", "--home", str(home), *extra])
        assert r.exit_code == 1 and ("has no embeddings" in r.output or '"items": 0' in r.output), r.output
