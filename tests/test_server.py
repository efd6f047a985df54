"""`batchcli serve` against a real uvicorn server on 127.0.0.1: batches created from paths, URLs,
base64 and uploads; listed, paged, paused, resumed, cancelled; exports; the security model."""

from __future__ import annotations

import base64
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from crashops import make_pngs, wait_for
from serverkit import (
    call,
    jcall,
    multipart,
    need_serve_extra,
    serve_photos,
    server_env,
    start_server,
    wait_status,
    ws_events,
    ws_url,
)

from batchcli.engine.liveness import runner_alive
from batchcli.engine.store import Store

need_serve_extra()

API = "/api/v1"


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    s = serve_photos(tmp_path_factory, "serve", 6, "--max-upload", "40K", "--max-upload-files", "3")
    yield s
    s.stop()


def batch_dirs(srv) -> set[str]:
    folder = os.path.join(srv.home, "batches")
    return set(os.listdir(folder)) if os.path.isdir(folder) else set()


def post(srv, body, path="/batches", **kw):
    return jcall(srv.url + API + path, "POST", body, **kw)


def test_create_from_paths_list_filter_and_page(srv):
    status, made = post(srv, {"inputs": ["photos/"], "out": "web/", "name": "paths",
                              "pipeline": "orient | resize 32x32 | convert webp", "workers": 1})
    assert status == 201, made
    assert made["total"] == 6 and made["status"] in ("pending", "running", "completed")
    assert made["batch_id"] in made["message"]
    s = wait_status(srv, made["batch_id"])
    assert s["status"] == "completed" and s["completed"] == 6
    assert sorted(os.listdir(srv.root / "web")) == [f"img{k:03d}.webp" for k in range(6)]
    # the same object as `status --json`
    for key in ("batch_id", "name", "status", "total", "completed", "failed", "remaining", "progress_percent",
                "created_at", "started_at", "paused_at", "completed_at", "out_dir", "pipeline", "runner_pid"):
        assert key in s
    status, page = jcall(f"{srv.url}{API}/batches/{made['batch_id']}/items?status=completed&limit=4&offset=4")
    assert status == 200 and page["total"] == 6 and [r["i"] for r in page["items"]] == [4, 5]
    assert jcall(f"{srv.url}{API}/batches/paths")[1]["batch_id"] == made["batch_id"]  # by name
    _, listed = jcall(f"{srv.url}{API}/batches?name=paths&status=completed")
    assert listed["total"] == 1 and listed["batches"][0]["batch_id"] == made["batch_id"]
    _, listed = jcall(f"{srv.url}{API}/batches?status=running,paused&name=paths")
    assert listed == {"batches": [], "total": 0}
    wait_status(srv, post(srv, {"inputs": ["photos/img000.png"], "pipeline": "resize 8x8", "workers": 1,
                                "name": "second"})[1]["batch_id"])
    _, every = jcall(f"{srv.url}{API}/batches?limit=1000")
    ids = [b["batch_id"] for b in every["batches"]]
    assert ids == sorted(ids, reverse=True) and every["total"] == len(ids) >= 2  # newest first
    _, page = jcall(f"{srv.url}{API}/batches?limit=1&offset=1")
    assert [b["batch_id"] for b in page["batches"]] == ids[1:2] and page["total"] == len(ids)
    status, bad = jcall(f"{srv.url}{API}/batches?status=bogus")
    assert status == 400 and "bogus" in bad["error"] and bad["status"] == 400


def test_create_from_urls_base64_and_uploads(srv, tmp_path):
    pngs = make_pngs(tmp_path / "served", 3)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: Quiet(*a, directory=str(tmp_path / "served")))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{httpd.server_address[1]}"
        status, a = post(srv, {"inputs": [f"{base}/img000.png"], "images": [{"url": f"{base}/img001.png"}],
                               "pipeline": "resize 16x16", "workers": 1})
        assert status == 201, a
        blob = base64.b64encode(open(pngs[2], "rb").read()).decode()
        status, b = post(srv, {"images": [{"base64": blob, "name": "../../evil name.png"}],
                               "pipeline": "resize 16x16", "workers": 1})
        assert status == 201, b
        body, ctype = multipart([("pipeline", "resize 16x16"), ("workers", "1"), ("name", "uploaded")],
                                [("files", "x/../a.png", open(pngs[0], "rb").read()),
                                 ("files", "a.png", open(pngs[1], "rb").read())])
        status, c = jcall(srv.url + API + "/batches", "POST", data=body, headers={"content-type": ctype})
        assert status == 201, c
        assert (a["total"], b["total"], c["total"]) == (2, 1, 2)
        for made in (a, b, c):
            assert wait_status(srv, made["batch_id"])["status"] == "completed"
    finally:
        httpd.shutdown()
    # uploads land in the batch folder under sanitised, unique names
    up = os.path.join(srv.home, "batches", c["batch_id"], "uploads")
    assert sorted(os.listdir(up)) == ["a.png", "a_2.png"]
    assert os.listdir(os.path.join(srv.home, "batches", b["batch_id"], "uploads")) == ["evil name.png"]
    assert call(f"{srv.url}{API}/batches/{c['batch_id']}/export.zip")[0] == 200  # outputs kept with the batch


@pytest.mark.parametrize("body, words", [
    ({"pipeline": "resize 16x16"}, "no images"),
    ({"images": [{"url": "http://x/a.png", "base64": "AAAA"}], "pipeline": "resize 16x16"}, "exactly one of url or base64"),
    ({"images": [{"name": "a.png"}], "pipeline": "resize 16x16"}, "exactly one of url or base64"),
    ({"images": [{"base64": "***", "name": "a.png"}], "pipeline": "resize 16x16"}, "not valid base64"),
    ({"inputs": ["photos/"], "pipeline": "resize 16x16 | frobnicate"}, "unknown operation 'frobnicate'"),
    ({"inputs": ["photos/"], "pipeline": "resize 16x16", "wokers": 2}, "wokers"),
    ({"inputs": ["photos/"], "pipeline": "resize 16x16", "workers": 0}, "workers"),
    ({"inputs": ["nothing-here/"], "pipeline": "resize 16x16"}, "nothing-here"),
    ({"inputs": ["photos/"], "pipeline": "resize 16x16", "media": "sound"}, "media sound: expected image, video or all"),
    ({"inputs": ["photos/"], "pipeline": "resize 16x16", "variants": {"a b": "resize 8x8"}}, "a b"),
])
def test_bad_requests_are_400_naming_the_problem(srv, body, words):
    before = batch_dirs(srv)
    status, err = post(srv, body)
    assert status == 400 and err["status"] == 400 and words in err["error"], err
    assert batch_dirs(srv) == before  # nothing left behind


def test_uploads_over_the_caps_are_413(srv, tmp_path):
    before = batch_dirs(srv)
    body, ctype = multipart([("pipeline", "resize 16x16")], [("files", "big.png", os.urandom(50_000))])
    status, err = jcall(srv.url + API + "/batches", "POST", data=body, headers={"content-type": ctype})
    assert status == 413 and "big.png" in err["error"] and "--max-upload" in err["error"]
    small = open(make_pngs(tmp_path, 1, size=8)[0], "rb").read()
    body, ctype = multipart([("pipeline", "resize 16x16")], [("files", f"f{k}.png", small) for k in range(4)])
    status, err = jcall(srv.url + API + "/batches", "POST", data=body, headers={"content-type": ctype})
    assert status == 413 and "more than 3 files" in err["error"]
    assert batch_dirs(srv) == before


def test_paths_outside_the_allowed_roots_are_400_and_never_echo_server_paths(srv, tmp_path):
    outside = tmp_path / "secret"
    make_pngs(outside, 1)
    os.symlink(outside / "img000.png", srv.root / "photos-link.png")
    os.symlink(outside, srv.root / "dirlink")
    make_pngs(srv.root / "mixed", 1)
    os.symlink(outside / "img000.png", srv.root / "mixed" / "img999.png")
    try:
        for body in ({"inputs": [str(outside)]}, {"inputs": ["../secret"]}, {"inputs": ["photos-link.png"]},
                     {"inputs": ["dirlink/img000.png"]}, {"inputs": ["photos/"], "out": str(tmp_path / "o")},
                     {"inputs": ["photos/"], "out": "web/../../o"}, {"inputs": ["mixed/"]}):
            status, err = post(srv, {**body, "pipeline": "resize 16x16"})
            assert status == 400, (body, err)
            assert "outside the allowed folders" in err["error"] or "'..' is not allowed" in err["error"], err
            assert str(tmp_path) not in err["error"] and srv.home not in err["error"], err
    finally:
        os.unlink(srv.root / "photos-link.png")
        os.unlink(srv.root / "dirlink")


def test_files_a_pipeline_reads_are_confined_to_the_allowed_roots_too(srv, tmp_path):
    """A LUT, a look, a profile, a model, a logo or a font named in a client's pipeline is a file
    the server reads on its behalf: outside the roots it is 400 before anything reads it, so no
    line of it can come back in an error, and no pixel of it in an output."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    secret = outside / "secret.txt"
    secret.write_text("SECRET-LINE 1 2 3\n")
    make_pngs(outside, 1)
    cube = "LUT_3D_SIZE 2\n" + "".join(f"{r} {g} {b}\n" for b in (0, 1) for g in (0, 1) for r in (0, 1))
    (outside / "id.cube").write_text(cube)
    (srv.root / "luts").mkdir(exist_ok=True)
    (srv.root / "luts" / "id.cube").write_text(cube)
    os.symlink(outside / "id.cube", srv.root / "luts" / "out.cube")
    try:
        for pipeline in (f"lut {secret}", f"lut {outside}/id.cube", "lut luts/out.cube", "lut ../elsewhere/id.cube",
                         f"watermark image={outside}/img000.png", f"watermark text=hi font={secret}",
                         f"preset {secret}", f"profile {secret}", f"model {secret} task=classify",
                         f"faces model={secret}"):
            status, err = post(srv, {"inputs": ["photos/"], "pipeline": pipeline})
            assert status == 400, (pipeline, err)
            assert "outside the allowed folders" in err["error"] or "'..' is not allowed" in err["error"], (pipeline, err)
            assert "SECRET" not in err["error"] and str(tmp_path) not in err["error"], err
        status, err = post(srv, {"inputs": ["photos/"], "pipeline_toml": f'[[op]]\nname = "lut"\nfile = "{secret}"\n'})
        assert status == 400 and "outside the allowed folders" in err["error"] and "SECRET" not in err["error"], err
        status, made = post(srv, {"inputs": ["photos/"], "pipeline": "lut luts/id.cube | resize 16x16"})
        assert status == 201, made  # inside a root (relative: under the first one) it is read as on the command line
        wait_status(srv, made["batch_id"], ("completed",))
    finally:
        os.unlink(srv.root / "luts" / "out.cube")


def test_pause_resume_cancel_delete_and_their_409s(srv):
    status, made = post(srv, {"inputs": ["photos/"], "pipeline": "crashtest delay=0.3 | resize 16x16",
                              "workers": 1, "name": "slow"})
    assert status == 201, made
    bid = made["batch_id"]
    url = f"{srv.url}{API}/batches/{bid}"
    wait_status(srv, bid, ("running",))
    status, err = jcall(url, "DELETE")
    assert status == 409 and "running" in err["error"]
    from websockets.sync.client import connect

    with connect(ws_url(srv, f"{API}/batches/{bid}/events"), open_timeout=10) as ws:
        status, s = jcall(url + "/pause", "POST", {"wait": 0})
        # asked: 202 while the runner finishes its item (200 if it was just done with it)
        assert (status, s["status"]) in ((202, "running"), (200, "paused")), (status, s)
        assert wait_status(srv, bid, ("paused",))["remaining"] > 0
        status, s = jcall(url + "/pause", "POST", {"wait": 10})
        assert status == 200 and s["status"] == "paused"
        assert _next(ws, "paused")["status"] == "paused"
        status, s = jcall(url + "/resume", "POST", {})
        assert status == 200 and s["status"] == "running", s
        assert _next(ws, "started")["resumed"] is True  # the same stream goes on after a resume
    status, err = jcall(url + "/resume", "POST", {})
    assert status == 409 and "running" in err["error"]
    status, s = jcall(url + "/cancel", "POST", {"wait": 10})
    assert status == 200 and s["status"] == "cancelled"
    for action in ("pause", "cancel", "resume"):
        status, err = jcall(f"{url}/{action}", "POST", {})
        assert status == 409 and "cancelled" in err["error"], (action, err)
    status, gone = jcall(url, "DELETE")
    assert status == 200 and gone["batch_id"] == bid
    assert jcall(url)[0] == 404


def _next(ws, kind: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        ev = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
        if ev["type"] == kind:
            return ev


def test_resume_retry_failed_pipeline_toml_and_delete_with_purge(srv, tmp_path):
    toml = '[[op]]\nname = "crashtest"\naction = "raise"\nmatch = "img001"\nonce = "%s"\n\n' \
           '[[op]]\nname = "resize"\nsize = "16x16"\n' % (tmp_path / "marks")
    (tmp_path / "marks").mkdir()
    status, made = post(srv, {"inputs": ["photos/img000.png", "photos/img001.png"], "out": "purged/",
                              "pipeline_toml": toml, "workers": 1, "retries": 0})
    assert status == 201, made
    s = wait_status(srv, made["batch_id"])
    assert (s["status"], s["completed"], s["failed"]) == ("completed", 1, 1)
    assert s["top_failures"][0]["reason"].startswith("op: ")
    url = f"{srv.url}{API}/batches/{made['batch_id']}"
    status, err = jcall(url + "/resume", "POST", {})
    assert status == 409 and "nothing to resume" in err["error"]
    status, s = jcall(url + "/resume", "POST", {"retry_failed": True})
    # one item: on a fast machine the runner may already have finished when the answer is made
    assert status == 200 and s["status"] in ("running", "completed") and s["pid"], s
    deadline = time.monotonic() + 60
    while (s := wait_status(srv, made["batch_id"]))["completed"] != 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (s["status"], s["completed"], s["failed"]) == ("completed", 2, 0), s
    assert sorted(os.listdir(srv.root / "purged")) == ["img000.png", "img001.png"]
    status, gone = jcall(url + "?purge_outputs=true", "DELETE")
    assert status == 200 and gone["outputs_removed"] == 2
    assert not (srv.root / "purged").exists() or os.listdir(srv.root / "purged") == []


def test_recover_and_cleanup_take_the_cli_options_as_json(srv):
    status, made = post(srv, {"inputs": ["photos/img000.png"], "pipeline": "resize 8x8", "workers": 1})
    assert status == 201
    wait_status(srv, made["batch_id"])
    paths = Store(srv.home).resolve(made["batch_id"])
    wait_for(lambda: runner_alive(paths) is None, what="its runner to exit")  # cleanup skips a live one
    status, rec = post(srv, {}, "/recover")
    assert status == 200 and rec["recovered_count"] == 0 and rec["failed_count"] == 0
    status, dry = post(srv, {"older_than": "0s", "status": ["completed"], "dry_run": True}, "/cleanup")
    assert status == 200 and dry["dry_run"] is True and dry["cleaned_count"] >= 1
    status, err = post(srv, {"older_than": "soon"}, "/cleanup")
    assert status == 400 and "older_than" in err["error"]


def test_variants_as_an_object_or_as_flags(srv):
    status, made = post(srv, {"inputs": ["photos/img000.png"], "out": "varied/", "pipeline": "resize 24x24",
                              "variants": {"small": "resize 8x8"}, "workers": 1})
    assert status == 201, made
    assert wait_status(srv, made["batch_id"])["status"] == "completed"
    assert os.path.exists(srv.root / "varied" / "small" / "img000.png")
    body, ctype = multipart([("pipeline", "resize 24x24"), ("variants", "tiny=resize 4x4"), ("inputs", "photos/img001.png"),
                             ("out", "varied2/")], [])
    status, made = jcall(srv.url + API + "/batches", "POST", data=body, headers={"content-type": ctype})
    assert status == 201, made
    assert wait_status(srv, made["batch_id"])["status"] == "completed"
    assert os.path.exists(srv.root / "varied2" / "tiny" / "img001.png")


def test_zip_equals_the_cli_export_byte_for_byte(srv, tmp_path):
    status, made = post(srv, {"inputs": ["photos/"], "out": "zipped/", "pipeline": "resize 24x24 | convert png",
                              "workers": 1})
    assert status == 201
    wait_status(srv, made["batch_id"])
    status, headers, served = call(f"{srv.url}{API}/batches/{made['batch_id']}/export.zip")
    assert status == 200 and headers["content-type"] == "application/zip"
    r = subprocess.run([sys.executable, "-m", "batchcli", "export", made["batch_id"], "--zip", str(tmp_path / "cli.zip")],
                       env=server_env(srv.home), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert served == (tmp_path / "cli.zip").read_bytes()
    for part in ("manifest.csv", "manifest.jsonl", "contact-sheet.jpg", "items/0/output", "items/0/thumbnail",
                 "items/0/thumbnail?side=input"):
        status, headers, blob = call(f"{srv.url}{API}/batches/{made['batch_id']}/{part}")
        assert status == 200 and blob, part
    assert blob[:2] == b"\xff\xd8"  # thumbnails are JPEGs
    cached = os.listdir(os.path.join(srv.home, "batches", made["batch_id"], "thumbs"))
    assert sorted(n.split("-")[0] for n in cached) == ["input", "output"]  # made once, kept with the batch
    assert call(f"{srv.url}{API}/batches/{made['batch_id']}/items/99/output")[0] == 404


def test_export_with_no_completed_results_is_404(srv):
    status, made = post(srv, {"inputs": ["photos/img000.png"], "pipeline": "crashtest raise | resize 16x16",
                              "workers": 1, "retries": 0})
    assert status == 201
    assert wait_status(srv, made["batch_id"])["status"] == "failed"
    status, err = jcall(f"{srv.url}{API}/batches/{made['batch_id']}/export.zip")
    assert status == 404 and "no completed results" in err["error"]


def test_websocket_events_arrive_in_order_through_finished(srv):
    status, made = post(srv, {"inputs": ["photos/"], "pipeline": "crashtest delay=0.05 | resize 16x16",
                              "workers": 1})
    assert status == 201
    events = ws_events(srv, made["batch_id"], "?since=0")
    types = [e["type"] for e in events]
    kinds = [t for t in types if t != "progress"]
    assert kinds[0] == "started" and kinds[-1] == "finished", types
    assert sorted(e["i"] for e in events if e["type"] == "item_completed") == list(range(6))
    seqs = [e["seq"] for e in events if e["type"] != "progress"]
    assert seqs == sorted(seqs)
    done = [e["completed"] for e in events if e["type"] == "progress"]
    assert done == sorted(done) and events[-1]["status"] == "completed" and events[-1]["completed"] == 6
    # a late subscriber to a finished batch gets where it stands, then the end
    late = ws_events(srv, made["batch_id"])
    assert [e["type"] for e in late] == ["progress", "finished"]


def test_batches_started_from_the_cli_show_up_in_the_event_stream(srv):
    from crashops import spawn

    req = urllib_stream(srv.url + API + "/events?types=progress,finished")
    proc = spawn(srv.home, "start", srv.root / "photos", "--out", srv.root / "fromcli",
                 "--pipeline", "resize 8x8", "-w", "1", "--name", "fromcli")
    try:
        seen = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = req.readline().decode()
            if line.startswith("data: "):
                ev = json.loads(line[6:])
                seen.append(ev)
                if ev["type"] == "finished" and jcall(f"{srv.url}{API}/batches/{ev['batch_id']}")[1]["name"] == "fromcli":
                    break
        assert seen and seen[-1]["type"] == "finished", seen[-3:]
        assert {e["type"] for e in seen} <= {"progress", "finished"}
        _, listed = jcall(f"{srv.url}{API}/batches?name=fromcli")
        assert listed["batches"][0]["batch_id"] == seen[-1]["batch_id"]
    finally:
        req.close()
        proc.wait(60)


def urllib_stream(url: str):
    import urllib.request

    return urllib.request.urlopen(url, timeout=60)


def test_the_server_killed_mid_batch_leaves_the_batch_running_to_completion(tmp_path):
    root = tmp_path / "root"
    make_pngs(root / "photos", 6)
    s = start_server(tmp_path / "home", root)
    status, made = jcall(s.url + API + "/batches", "POST", {"inputs": ["photos/"], "workers": 1,
                                                            "pipeline": "crashtest delay=0.2 | resize 16x16"})
    assert status == 201
    wait_status(s, made["batch_id"], ("running",))
    os.kill(s.proc.pid, signal.SIGKILL)
    s.proc.wait()
    s2 = start_server(tmp_path / "home", root)  # a restarted server loses nothing
    try:
        assert wait_status(s2, made["batch_id"])["completed"] == 6
    finally:
        s2.stop()


def test_metrics_docs_and_the_offline_dashboard(srv):
    from prometheus_client.parser import text_string_to_metric_families

    status, _, text = call(srv.url + "/metrics")
    assert status == 200
    found = {s.name: s for fam in text_string_to_metric_families(text.decode()) for s in fam.samples
             if s.labels.get("status") in (None, "completed")}
    _, listed = jcall(f"{srv.url}{API}/batches?status=completed&limit=1000")
    assert found["batchcli_batches"].value == listed["total"]  # the `batchcli stats` figures
    assert "batchcli_items_per_second" in found and "batchcli_batch_duration_seconds" in found
    assert call(srv.url + "/metrics?since=forever")[0] == 400
    status, _, doc = call(srv.url + "/openapi.json")
    paths = json.loads(doc)["paths"]
    assert "/api/v1/batches" in paths and "/api/v1/batches/{batch}/export.zip" in paths
    for page in ("/", "/docs", "/static/app.js", "/static/app.css"):
        status, _, body = call(srv.url + page)
        assert status == 200, page
        assert b"https://" not in body and b"cdn" not in body.lower(), f"{page} loads something from outside"
    docs = call(srv.url + "/docs")[2].decode()
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):  # the interactive docs' files come from the package
        url = [u for u in docs.replace('"', "'").split("'") if u.endswith(asset)][0]
        assert url.startswith("/") and call(srv.url + url)[0] == 200, url


def test_cors_is_off_unless_asked(srv):
    _, headers, _ = call(srv.url + API + "/batches", headers={"Origin": "http://elsewhere.example"})
    assert not any(h.lower() == "access-control-allow-origin" for h in headers)


def test_pages_of_other_sites_cannot_drive_the_server(srv):
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    before = batch_dirs(srv)
    body = {"inputs": ["photos/"], "pipeline": "resize 8x8"}
    status, err = post(srv, body, headers={"Origin": "http://evil.example"})  # a form posted from another site
    assert status == 403 and "--cors http://evil.example" in err["error"]
    status, err = post(srv, body, headers={"Host": "evil.example:8750"})  # a name rebound to 127.0.0.1
    assert status == 403 and "not a loopback name" in err["error"]
    assert batch_dirs(srv) == before
    with pytest.raises(InvalidStatus):
        connect(ws_url(srv, f"{API}/batches/x/events"), origin="http://evil.example", open_timeout=10)
    host = srv.url.split("//")[1]
    status, made = post(srv, {**body, "name": "same-origin"}, headers={"Origin": f"http://{host}"})
    assert status == 201, made  # the dashboard's own requests
    wait_status(srv, made["batch_id"])


def test_a_non_loopback_bind_needs_a_token_from_the_flag_or_the_environment(tmp_path):
    r = subprocess.run([sys.executable, "-m", "batchcli", "serve", "--host", "0.0.0.0", "--port", "0"],
                       env=server_env(tmp_path / "home"), capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "token is required" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "batchcli", "serve", "--help"], capture_output=True, text=True)
    assert "127.0.0.1" in r.stdout and "8750" in r.stdout
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        for args, words in ((["--port", str(port)], f"cannot listen on 127.0.0.1:{port}"),
                            (["--port", "0", "--allow-root", str(tmp_path / "nowhere")], "not a folder")):
            r = subprocess.run([sys.executable, "-m", "batchcli", "serve", *args], env=server_env(tmp_path / "home"),
                               capture_output=True, text=True, timeout=60)
            assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, r.stderr
    root = tmp_path / "root"
    root.mkdir()
    s = start_server(tmp_path / "home", root, "--host", "0.0.0.0", env={"BATCHCLI_TOKEN": "from-the-environment"})
    try:
        port = s.url.rsplit(":", 1)[1]
        local = f"http://127.0.0.1:{port}"
        assert jcall(local + API + "/info")[0] == 401
        status, info = jcall(local + API + "/info", headers={"Authorization": "Bearer from-the-environment"})
        assert status == 200 and info["max_upload"] == 200 << 20 and info["max_upload_files"] == 1000
        assert info["roots"] == [os.path.realpath(root)]
    finally:
        s.stop()


def test_token_auto_is_required_under_api_and_cors_lets_one_origin_in(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    s = start_server(tmp_path / "home", root, "--token", "auto", "--cors", "http://app.example")
    try:
        token = open(s.log).read().split("token: ", 1)[1].split()[0]
        status, err = jcall(s.url + API + "/batches")
        assert status == 401 and err == {"error": "missing or wrong token: send Authorization: Bearer TOKEN",
                                         "status": 401}
        assert jcall(s.url + API + "/batches", headers={"Authorization": "Bearer wrong-token"})[0] == 401
        assert jcall(s.url + "/metrics")[0] == 401
        status, headers, _ = call(s.url + API + "/batches", headers={"Authorization": f"Bearer {token}",
                                                                     "Origin": "http://app.example"})
        assert status == 200 and headers.get("access-control-allow-origin") == "http://app.example"
        assert jcall(f"{s.url}{API}/batches?token={token}")[0] == 200
        status, _ = jcall(s.url + API + "/recover", "POST", {}, headers={"Authorization": f"Bearer {token}",
                                                                        "Origin": "http://app.example"})
        assert status == 200  # a --cors origin's POST goes through
        assert call(s.url + "/")[0] == 200  # the dashboard page itself asks for the token
        make_pngs(root / "p", 2)
        status, made = jcall(s.url + API + "/batches", "POST", {"inputs": ["p/"], "pipeline": "resize 8x8"},
                             headers={"Authorization": f"Bearer {token}"})
        assert status == 201, made
        events = ws_events(s, made["batch_id"], f"?since=0&token={token}")  # a WebSocket takes ?token=
        assert events[-1]["type"] == "finished" and events[-1]["completed"] == 2
        from websockets.exceptions import InvalidStatus
        from websockets.sync.client import connect

        with pytest.raises(InvalidStatus):
            connect(s.url.replace("http", "ws") + API + "/batches/x/events", open_timeout=10)
    finally:
        s.stop()


def test_without_the_serve_extra_the_command_says_what_to_install(tmp_path):
    code = ("import sys, runpy\n"
            "sys.modules['fastapi'] = None  # as if the serve extra were not installed\n"
            "sys.argv = ['batchcli', 'serve', '--port', '0']\n"
            "runpy.run_module('batchcli', run_name='__main__')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=server_env(tmp_path / "home"),
                       timeout=60)
    assert r.returncode == 2 and "pip install 'batchcli[serve]'" in r.stderr and "Traceback" not in r.stderr


def test_a_line_being_written_is_read_once_it_is_whole(tmp_path):
    """The status cache folds only new lines: a half-written last line is not counted as
    corrupt again and again, and is read when it is complete."""
    from crashops import create

    from batchcli.engine.journal import encode
    from batchcli.engine.store import Store
    from batchcli.server.events import Hub

    make_pngs(tmp_path / "in", 2)
    paths = create(tmp_path / "home", [tmp_path / "in"], tmp_path / "out", "resize 8x8")
    hub = Hub(Store(str(tmp_path / "home")))
    line = encode({"seq": 1, "t": 1.0, "type": "item_failed", "i": 0, "error_class": "decode", "error": "x: bad"})
    with open(paths.journal, "ab") as fh:
        fh.write(line[:20])
    for _ in range(3):
        s = hub.status(paths)
        assert s["failed"] == 0 and s["journal_corrupt_lines"] <= 1
    with open(paths.journal, "ab") as fh:
        fh.write(line[20:])
    s = hub.status(paths)
    assert s["failed"] == 1 and s["journal_corrupt_lines"] == 0


def test_the_record_index_reads_only_what_the_journal_gained(tmp_path):
    from batchcli.engine.journal import encode
    from batchcli.server.files import RecordIndex

    journal = tmp_path / "journal.jsonl"
    journal.write_bytes(encode({"seq": 0, "type": "header"}) + encode({"seq": 1, "type": "item_failed", "i": 1, "error": "x"}))
    index = RecordIndex(3)
    assert index.record(str(journal), 1)["type"] == "item_failed" and index.record(str(journal), 0) is None
    late = encode({"seq": 2, "type": "item_completed", "i": 1, "out": "b.png"})
    with open(journal, "ab") as fh:
        fh.write(late[:10])  # being written
    assert index.record(str(journal), 1)["type"] == "item_failed"
    with open(journal, "ab") as fh:
        fh.write(late[10:])
    before = index.end
    assert index.record(str(journal), 1)["out"] == "b.png"  # the last record wins
    assert index.end == before + len(late)
