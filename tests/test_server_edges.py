"""`batchcli serve` at its edges, against a real server on 127.0.0.1: damaged batch folders,
stopping with open event streams, uploads whatever their names, a replay that spans runs, and
the HTTP statuses of refused WebSocket handshakes and odd batch references."""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal

import pytest
from crashops import create, make_pngs, run, wait_for
from serverkit import jcall, multipart, need_serve_extra, serve_photos, start_server, wait_status, ws_events, ws_url

from batchcli.engine.store import Store

need_serve_extra()

API = "/api/v1"
CLEANUP_HINT = "remove it with: batchcli cleanup --status damaged --older-than 0s"


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    s = serve_photos(tmp_path_factory, "edges", 4)
    yield s
    s.stop()


def _refused(url: str, **kw) -> tuple[int, dict]:
    """A WebSocket handshake the server refuses: its HTTP status and JSON body."""
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    with pytest.raises(InvalidStatus) as info:
        connect(url, open_timeout=10, **kw)
    resp = info.value.response
    return resp.status_code, json.loads(resp.body)


@pytest.mark.parametrize("damage", ["missing manifest.json", "manifest.json unreadable"])
def test_a_damaged_batch_is_listed_and_refused_with_the_cli_message(tmp_path, damage):
    """A garbled manifest (not JSON) made its other endpoints answer 500 'internal error'."""
    root = tmp_path / "root"
    make_pngs(root / "p", 2)
    home = tmp_path / "home"
    whole = create(home, [root / "p"], root / "out", "resize 8x8", name="whole")
    broken = create(home, [root / "p"], root / "out2", "resize 8x8", name="broken")
    if damage.startswith("missing"):
        os.unlink(broken.manifest)
    else:
        with open(broken.manifest, "w") as fh:
            fh.write("{not json")
        damage += ": not JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"
    cli = run(home, "pause", broken.id)
    assert cli.returncode == 2 and CLEANUP_HINT in cli.stderr
    message = cli.stderr.strip().removeprefix("Error: ")
    assert message == f"batch {broken.id} is damaged ({damage}); {CLEANUP_HINT}"
    s = start_server(home, root)
    try:
        listed = jcall(f"{s.url}{API}/batches")[1]
        assert listed["total"] == 2 and len(listed["batches"]) == 2  # never hidden, as in `batchcli list`
        row = next(b for b in listed["batches"] if b["batch_id"] == broken.id)
        assert row["status"] == "damaged" and row["reason"] == damage
        only = jcall(f"{s.url}{API}/batches?status=damaged")[1]
        assert [b["batch_id"] for b in only["batches"]] == [broken.id] and only["total"] == 1
        cli_list = json.loads(run(home, "list", "--status", "damaged", "--json").stdout)["batches"]
        assert [b["batch_id"] for b in cli_list] == [broken.id]
        status, got = jcall(f"{s.url}{API}/batches/{broken.id}")  # `status --json`: damaged, with the reason
        assert status == 200 and got["status"] == "damaged" and got["reason"] == damage
        for method, path in (("GET", "/items"), ("GET", "/export.zip"), ("GET", "/manifest.csv"),
                             ("GET", "/contact-sheet.jpg"), ("GET", "/items/0/output"), ("GET", "/items/0/thumbnail"),
                             ("POST", "/pause"), ("POST", "/resume"), ("POST", "/cancel")):
            status, err = jcall(f"{s.url}{API}/batches/{broken.id}{path}", method, {} if method == "POST" else None)
            assert (status, err) == (409, {"error": message, "status": 409}), (path, status, err)
        assert _refused(ws_url(s, f"{API}/batches/{broken.id}/events")) == (409, {"error": message, "status": 409})
        status, err = jcall(f"{s.url}{API}/batches/{broken.id}?purge_outputs=true", "DELETE")
        assert status == 409 and "cannot be purged" in err["error"]
        status, gone = jcall(f"{s.url}{API}/batches/{broken.id}", "DELETE")
        assert status == 200 and gone["status"] == "damaged" and not os.path.exists(broken.dir)
        assert [b["batch_id"] for b in jcall(f"{s.url}{API}/batches")[1]["batches"]] == [whole.id]
    finally:
        s.stop()


def test_a_server_killed_during_an_upload_leaves_a_batch_listed_as_damaged(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    home = tmp_path / "home"
    s = start_server(home, root)
    host, port = s.url.split("//")[1].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    body, ctype = multipart([], [("files", "a.png", b"\x89PNG" + b"\0" * 200_000)])
    conn.putrequest("POST", API + "/batches")
    conn.putheader("content-type", ctype)
    conn.putheader("content-length", str(len(body)))
    conn.endheaders()
    conn.send(body[:100_000])  # the upload is under way...
    batches = home / "batches"
    wait_for(lambda: batches.is_dir() and any((d / "uploads").is_dir() for d in batches.iterdir()), what="the upload")
    os.kill(s.proc.pid, signal.SIGKILL)  # ...when the server dies
    s.proc.wait()
    conn.close()
    s2 = start_server(home, root)
    try:
        listed = jcall(f"{s2.url}{API}/batches")[1]
        assert listed["total"] == 1 and listed["batches"][0]["status"] == "damaged", listed
        bid, reason = listed["batches"][0]["batch_id"], listed["batches"][0]["reason"]
        assert "half-made" in reason
        status, err = jcall(f"{s2.url}{API}/batches/{bid}/items")
        assert status == 409 and err["error"] == f"batch {bid} is damaged ({reason}); {CLEANUP_HINT}"
        status, done = jcall(f"{s2.url}{API}/cleanup", "POST", {"status": ["damaged"], "older_than": "0s"})
        assert status == 200 and done["cleaned_count"] == 1 and jcall(f"{s2.url}{API}/batches")[1]["total"] == 0
    finally:
        s2.stop()


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, -signal.SIGTERM)])
def test_stopping_the_server_ends_open_event_streams_at_once(tmp_path, sig, code):
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    root = tmp_path / "root"
    make_pngs(root / "p", 2)
    home = tmp_path / "home"
    paused = create(home, [root / "p"], root / "out", "resize 8x8")  # pending: its WebSocket stays open
    s = start_server(home, root)
    sse = call_stream(s.url + API + "/events")
    assert sse.readline() == b"retry: 2000\n"
    with connect(ws_url(s, f"{API}/batches/{paused.id}/events"), open_timeout=10) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "progress"
        s.proc.send_signal(sig)
        assert sse.read() in (b"\n", b"")  # the stream ends (the browser's EventSource reconnects)
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001, closed.value
    assert s.proc.wait(10) == code  # as any command stopped by Ctrl-C (130) or SIGTERM
    log = open(s.log).read()
    assert "Traceback" not in log and "ERROR" not in log, log
    sse.close()


def call_stream(url: str):
    import urllib.request

    return urllib.request.urlopen(url, timeout=30)


def test_every_uploaded_file_is_an_item_whatever_its_name(srv):
    blob = open(srv.root / "photos" / "img000.png", "rb").read()
    names = ["IMG_0001", "photo.JPG2", "ok.png", ".", ".."]
    body, ctype = multipart([("pipeline", "resize 8x8 | convert webp")], [("files", n, blob) for n in names])
    status, made = jcall(srv.url + API + "/batches", "POST", data=body, headers={"content-type": ctype})
    assert status == 201 and made["total"] == 5, made
    assert wait_status(srv, made["batch_id"])["completed"] == 5
    rows = jcall(f"{srv.url}{API}/batches/{made['batch_id']}/items")[1]["items"]
    assert [os.path.basename(r["src"]) for r in rows] == ["IMG_0001", "photo.JPG2", "ok.png", "file", "file_2"]
    # a base64 image without a name is called imageK (K: its index in images)
    b64 = base64.b64encode(blob).decode()
    status, made = jcall(srv.url + API + "/batches", "POST", {"images": [{"base64": b64}, {"base64": b64, "name": "x"}],
                                                              "pipeline": "resize 8x8"})
    assert status == 201 and made["total"] == 2, made
    assert wait_status(srv, made["batch_id"])["completed"] == 2
    rows = jcall(f"{srv.url}{API}/batches/{made['batch_id']}/items")[1]["items"]
    assert [os.path.basename(r["src"]) for r in rows] == ["image0", "x"]
    assert [os.path.basename(r["output"]) for r in rows] == ["image0.png", "x.png"]


def test_a_replay_from_since_spans_earlier_runs_and_follows_the_live_one(srv):
    status, made = jcall(srv.url + API + "/batches", "POST", {"inputs": ["photos/"], "out": "replay/", "workers": 1,
                                                              "pipeline": "crashtest delay=0.3 | resize 8x8"})
    assert status == 201
    first = wait_status(srv, made["batch_id"])
    assert first["completed"] == 4
    for f in (srv.root / "replay").iterdir():
        f.unlink()
    status, again = jcall(f"{srv.url}{API}/batches/{made['batch_id']}/resume", "POST", {"repair": True})
    assert status == 200, again
    events = ws_events(srv, made["batch_id"], "?since=0")
    kinds = [e["type"] for e in events if e["type"] != "progress"]
    assert kinds.count("started") == 2 and kinds.count("finished") >= 2, kinds
    assert kinds[-1] == "finished" and events[-1]["status"] == "completed"
    ends = [e["seq"] for e in events if e["type"] == "finished"]
    assert ends[-1] > ends[0]  # the stream went on past the first run's end
    assert sum(1 for e in events if e["type"] == "item_completed") == 8  # both runs' items


def test_refused_websocket_handshakes_and_odd_batch_references_get_the_http_statuses(tmp_path):
    root = tmp_path / "root"
    make_pngs(root / "p", 1)
    home = tmp_path / "home"
    one = create(home, [root / "p"], root / "o1", "resize 8x8")
    two = create(home, [root / "p"], root / "o2", "resize 8x8")
    s = start_server(home, root, "--token", "edges-token-123")
    auth = {"Authorization": "Bearer edges-token-123"}
    try:
        url = ws_url(s, f"{API}/batches/{one.id}/events")
        status, err = _refused(url)
        assert status == 401 and "missing or wrong token" in err["error"]
        assert _refused(url + "?token=wrong-token")[0] == 401
        assert _refused(url + "?token=edges-token-123", origin="http://evil.example")[0] == 403
        status, err = _refused(ws_url(s, f"{API}/batches/nosuch/events?token=edges-token-123"))
        assert status == 404 and "no batch matches 'nosuch'" in err["error"]
        status, err = _refused(url + "?token=edges-token-123&since=abc")
        assert status == 400 and err["error"].startswith("since 'abc'")
        status, err = jcall(f"{s.url}{API}/batches/%20/pause", "POST", {}, headers=auth)
        assert status == 400 and "empty batch argument" in err["error"]
        prefix = os.path.commonprefix([one.id, two.id])
        assert prefix and prefix not in (one.id, two.id)
        status, err = jcall(f"{s.url}{API}/batches/{prefix}", headers=auth)
        assert status == 400 and "ambiguous" in err["error"] and one.id in err["error"] and two.id in err["error"]
        assert Store(str(home)).ids() == [two.id, one.id]
    finally:
        s.stop()
