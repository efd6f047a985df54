"""CI reports of a batch: a Markdown summary (for `$GITHUB_STEP_SUMMARY` or a file) and JUnit XML
(one test case per item), written after a run or at any time later from the batch's files."""

from __future__ import annotations

import os
import re
from typing import IO
from xml.sax.saxutils import escape, quoteattr

from batchcli.argfiles import check_target
from batchcli.atomic import atomic_stream
from batchcli.engine.store import BatchPaths
from batchcli.errors import ConfigError
from batchcli.results.dest import check_file_target
from batchcli.results.facts import BatchFacts, batch_facts, item_results

REPORT_KINDS = {".xml": "junit", ".md": "markdown"}


def report_kind(path: str, flag: str = "--report") -> str:
    """'junit' or 'markdown' from the file name; a usage error (exit 2) for anything else, or
    when the folder it goes in does not exist."""
    kind = REPORT_KINDS.get(os.path.splitext(path)[1].lower())
    if kind is None:
        raise ConfigError(f"{flag} {path}: the name must end in .xml (JUnit) or .md (Markdown)")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ConfigError(f"{flag} {path}: no such folder {folder}")
    check_target(path, flag)
    return kind


def write_report(paths: BatchPaths, path: str) -> str:
    """Write the report `path` names (atomically). Returns its kind."""
    kind = report_kind(path)
    check_file_target(paths, "--report", path)
    with atomic_stream(path) as fh:
        if kind == "junit":
            write_junit(paths, fh)
        else:
            fh.write(markdown_summary(batch_facts(paths)).encode())
    return kind


def append_step_summary(paths: BatchPaths, path: str) -> None:
    """Append the Markdown summary to a file that others write too ($GITHUB_STEP_SUMMARY)."""
    text = markdown_summary(batch_facts(paths))
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(text + "\n")


# --------------------------------------------------------------------------------------------
# Markdown


def size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{int(n)} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def duration(secs: float) -> str:
    s = int(round(secs))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h {m:02d}m {sec:02d}s" if h else f"{m}m {sec:02d}s" if m else f"{secs:.1f}s"


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]<>|#])")


def _cell(text: str | None, limit: int = 200) -> str:
    """Text safe in a Markdown table cell: one line, special characters escaped, bounded."""
    t = _clean(text or "").replace("\r", " ").replace("\n", " ")
    if len(t) > limit:
        t = t[: limit - 1] + "…"
    return _MD_SPECIAL.sub(r"\\\1", t)


def markdown_summary(f: BatchFacts) -> str:
    """Counts, rate, bytes in and out and the saving, top failure reasons, failed items."""
    title = f"batchcli: batch `{f.batch_id}`" + (f" ({_cell(f.name)})" if f.name else "") + f" {f.status}"
    lines = [f"### {title}", ""]
    if f.reason:
        lines += [f"_{_cell(f.reason)}_", ""]
    rows = [("items", f"{f.total}"), ("completed", f"{f.completed}")]
    if f.reused:
        rows.append(("reused (up to date)", f"{f.reused}"))
    rows += [("failed", f"{f.failed}")]
    if f.failed_again:
        rows.append(("failed last time, unchanged (not run again)", f"{f.failed_again}"))
    if f.skipped:
        rows.append(("skipped", f"{f.skipped}"))
    if f.remaining:
        rows.append(("remaining", f"{f.remaining}"))
    rows.append(("rate", f"{f.rate:.1f} items/s ({f.processed} items in {duration(f.active_s)})"))
    if f.bytes_in or f.bytes_out:
        saved = f.saving
        rows.append(("bytes", f"{size(f.bytes_in)} in, {size(f.bytes_out)} out"
                     + (f" ({saved * 100:.0f}% saved)" if saved is not None and saved >= 0 else
                        f" ({-saved * 100:.0f}% larger)" if saved is not None else "")))
    if f.pipeline:
        code = _clean(f.pipeline).replace("`", "'").replace("|", "\\|")
        rows.append(("pipeline", f"`{code}`"))
    lines += ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), ""]
    if f.top_failures:
        lines += ["**Top failure reasons**", "", "| items | reason |", "|---:|---|"]
        lines += [f"| {n} | {_cell(reason)} |" for reason, n in f.top_failures]
        lines.append("")
    if f.failed_items:
        lines += ["**Failed items**", "", "| input | class | error |", "|---|---|---|"]
        for it in f.failed_items:
            msg = it.error or ""
            if msg.startswith(it.src + ": "):  # the input is in its own column
                msg = msg[len(it.src) + 2:]
            lines.append(f"| {_cell(it.rel)} | {_cell(it.error_class)} | {_cell(msg)} |")
        more = f.failed - len(f.failed_items)
        if more > 0:
            lines.append(f"\n_and {more} more_")
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# JUnit XML

_XML_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _clean(text: str) -> str:
    """Characters XML 1.0 (and most viewers) cannot carry become U+FFFD."""
    return _XML_BAD.sub("\ufffd", text)


def write_junit(paths: BatchPaths, fh: IO[bytes]) -> None:
    """One <testcase> per item (streamed): a failed item is a <failure> with its class as the
    type and its reason as the message; pending and skipped items are <skipped>."""
    f = batch_facts(paths, failed_rows=0)
    suite = f"batchcli {f.name or f.batch_id}"
    classname = f"batchcli.{f.name or f.batch_id}"
    not_run = f.skipped + f.remaining
    fh.write(b'<?xml version="1.0" encoding="UTF-8"?>\n')
    attrs = (f"name={quoteattr(_clean(suite))} tests=\"{f.total}\" failures=\"{f.failed}\" errors=\"0\" "
             f"skipped=\"{not_run}\" time=\"{f.active_s:.3f}\"")
    fh.write(f"<testsuites {attrs}>\n".encode())
    fh.write(f"  <testsuite {attrs} id={quoteattr(f.batch_id)}>\n".encode())
    fh.write(b"    <properties>\n")
    for key, value in (("batch_id", f.batch_id), ("status", f.status), ("pipeline", f.pipeline or ""),
                       ("out_dir", f.out_dir or ""), ("reused", str(f.reused))):
        fh.write(f"      <property name=\"{key}\" value={quoteattr(_clean(value))}/>\n".encode())
    fh.write(b"    </properties>\n")
    cls = quoteattr(_clean(classname))
    buf: list[str] = []
    for it in item_results(paths):
        head = f"    <testcase classname={cls} name={quoteattr(_clean(it.rel))} file={quoteattr(_clean(it.src))}"
        if it.seconds is not None:
            head += f" time=\"{it.seconds:.3f}\""
        if it.status == "failed":
            msg = _clean(it.error or "failed")
            buf.append(f"{head}>\n      <failure type={quoteattr(_clean(it.error_class or 'error'))} "
                       f"message={quoteattr(msg)}>{escape(msg)}</failure>\n    </testcase>\n")
        elif it.status in ("pending", "skipped"):
            why = "not run yet (batch paused or running)" if it.status == "pending" else "skipped (batch cancelled)"
            buf.append(f"{head}>\n      <skipped message=\"{why}\"/>\n    </testcase>\n")
        elif it.reused_from:
            buf.append(f"{head}>\n      <system-out>reused from batch {escape(it.reused_from)}</system-out>\n"
                       f"    </testcase>\n")
        else:
            buf.append(head + "/>\n")
        if len(buf) >= 512:
            fh.write("".join(buf).encode("utf-8", "replace"))
            buf.clear()
    fh.write("".join(buf).encode("utf-8", "replace"))
    fh.write(b"  </testsuite>\n</testsuites>\n")
