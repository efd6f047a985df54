"""CI reports: JUnit XML (parsed with junitparser, as the CI test reporters read it), the Markdown
summary appended to $GITHUB_STEP_SUMMARY or written with --report FILE.md, and export --report."""

from __future__ import annotations

import pytest
from conftest import cli, cli_json, make_tree
from junitparser import Failure, JUnitXml, Skipped

from batchcli.results.facts import FAILED_ROWS


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """6 good images and FAILED_ROWS + 3 broken ones (failures are cheap: a header check), one
    with Markdown's special characters in its name."""
    root = tmp_path_factory.mktemp("mixed")
    make_tree(root / "in", n=6, size=(120, 90))
    (root / "in" / "odd|name*.jpg").write_bytes(b"not an image")
    for k in range(FAILED_ROWS + 2):
        (root / "in" / "broken" / f"bad{k:03d}.jpg").parent.mkdir(parents=True, exist_ok=True)
        (root / "in" / "broken" / f"bad{k:03d}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    return root


def test_junit_report_one_case_per_item_failures_with_class_and_message(mixed, tmp_path, home):
    xml, summary = tmp_path / "report.xml", tmp_path / "step_summary.md"
    summary.write_text("earlier step\n")
    r = cli("start", str(mixed / "in"), "--out", str(tmp_path / "out"), "-p", "resize 32x32 | convert webp",
            "-w", "1", "--name", "ci", "--report", str(xml), env={"GITHUB_STEP_SUMMARY": str(summary)}, home=home)
    assert r.returncode == 1, r.stderr
    total = 6 + FAILED_ROWS + 3
    suites = list(JUnitXml.fromfile(str(xml)))
    assert len(suites) == 1
    suite = suites[0]
    assert (suite.tests, suite.failures, suite.errors, suite.skipped) == (total, FAILED_ROWS + 3, 0, 0)
    cases = list(suite)
    assert len(cases) == total
    failed = [c for c in cases if c.result and isinstance(c.result[0], Failure)]
    assert len(failed) == FAILED_ROWS + 3
    f = failed[0].result[0]
    assert f.type in ("decode", "truncated") and f.message.startswith(str(mixed / "in"))
    passed = [c for c in cases if not c.result]
    assert sorted(c.name for c in passed)[0] == "d0/img003.bmp" and all(c.time >= 0 for c in passed)
    assert {c.classname for c in cases} == {"batchcli.ci"}

    text = summary.read_text()
    assert text.startswith("earlier step\n### batchcli: batch `")  # appended, not replaced
    assert "| completed | 6 |" in text and f"| failed | {FAILED_ROWS + 3} |" in text
    assert "items/s" in text and " in, " in text and "saved)" in text
    assert "**Top failure reasons**" in text and "**Failed items**" in text
    assert "| odd\\|name\\*.jpg | " in text  # cells escaped: the table keeps its columns
    assert text.count("| broken/bad") == FAILED_ROWS - 1 and "_and 3 more_" in text


def test_no_summary_and_markdown_report_file(tmp_path, home):
    make_tree(tmp_path / "in", n=3)
    summary, md = tmp_path / "step_summary.md", tmp_path / "out.md"
    r = cli("start", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "-p", "resize 32x32", "-w", "1",
            "--no-summary", "--report", str(md), env={"GITHUB_STEP_SUMMARY": str(summary)}, home=home)
    assert r.returncode == 0, r.stderr
    assert not summary.exists()
    text = md.read_text()
    assert "| completed | 3 |" in text and "| failed | 0 |" in text and "Failed items" not in text


def test_export_report_after_the_fact_and_a_paused_batch_lists_pending_as_skipped(mixed, tmp_path, home):
    r = cli("start", str(mixed / "in"), "--out", str(tmp_path / "out"), "-p", "resize 32x32", "-w", "1",
            "--max-failures", "2", home=home)
    assert r.returncode == 1  # halted as failed by --max-failures, with items left
    s = cli_json("status", home=home)
    assert s["remaining"] > 0
    xml, md = tmp_path / "later.xml", tmp_path / "later.md"
    r = cli("export", s["batch_id"], "--report", str(xml), home=home)
    assert r.returncode == 0 and f"wrote the JUnit report to {xml}" in r.stdout, r.stderr
    suite = next(iter(JUnitXml.fromfile(str(xml))))
    assert suite.tests == s["total"] and suite.failures == s["failed"] and suite.skipped == s["remaining"]
    skipped = [c for c in suite if c.result and isinstance(c.result[0], Skipped)]
    assert len(skipped) == s["remaining"]
    assert cli("export", s["batch_id"], "--report", str(md), home=home).returncode == 0
    text = md.read_text()
    assert f"| remaining | {s['remaining']} |" in text and "halted" in text
    r = cli("export", s["batch_id"], "--report", str(tmp_path / "x.html"), home=home)
    assert r.returncode == 2 and "must end in .xml (JUnit) or .md (Markdown)" in r.stderr


def test_a_sync_reusing_failures_reports_only_its_own_work(tmp_path, home):
    """A failure reused by a sync (the input failed last time and is unchanged) is no work of
    this run: the Markdown summary, the CI summary and `stats` count only what was processed, as
    the terminal's "this run" does, and show the reused failure as such."""
    import json

    make_tree(tmp_path / "in", n=3)
    (tmp_path / "in" / "bad.jpg").write_text("junk\n")
    summary, md = tmp_path / "step_summary.md", tmp_path / "sum.md"
    args = ("sync", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "-p", "resize 32x32", "-w", "1")
    assert cli(*args, home=home).returncode == 1
    r = cli(*args, "--report", str(md), env={"GITHUB_STEP_SUMMARY": str(summary)}, home=home)
    assert r.returncode == 1 and "1 failed last time and are unchanged" in r.stdout and "this run: 0 items" in r.stdout
    for text in (md.read_text(), summary.read_text()):
        assert "| reused (up to date) | 3 |" in text and "| failed | 1 |" in text, text
        assert "| failed last time, unchanged (not run again) | 1 |" in text, text
        assert "| rate | 0.0 items/s (0 items in " in text, text
    s = json.loads(cli("stats", "--json", home=home).stdout)
    assert s["items"] == {"completed": 6, "failed": 2, "skipped": 0, "reused": 3, "failed_again": 1,
                          "processed": 4}  # 4 in the first run, none in the second
    r = cli("stats", home=home)
    assert "6 done, 2 failed, 3 of the done reused, 1 of the failed unchanged since they failed (not run again)" \
        in r.stdout, r.stdout


def test_a_report_that_cannot_be_written_leaves_no_earlier_one_behind(tmp_path, tiny_fs):
    """--report on a full disk: a warning, the exit code stays the batch's, and the earlier
    run's report at that path is removed, so a CI's test reporter does not read it as this run's."""
    from conftest import fill

    make_tree(tmp_path / "in", n=3, size=(32, 24))
    report = tiny_fs / "results.xml"
    report.write_text('<testsuites tests="99" failures="0"></testsuites>')
    fill(tiny_fs)
    r = cli("start", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "-p", "resize 8x8", "--min-free-space", "0",
            "--report", str(report), home=tmp_path / "home")
    assert r.returncode == 0, r.stderr
    assert f"could not write the report {report}" in r.stderr and "the earlier report there was removed" in r.stderr
    assert not report.exists()
