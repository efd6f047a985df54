"""export and verify: results out of the tool (ZIP, folder, manifest, contact sheet), checked."""

from typing import Annotated, Any, Optional

import typer

from batchcli.cli.console import plural
from batchcli.cli.options import BatchArg, HomeOpt, JsonOpt, handle_errors


def register(app: typer.Typer) -> None:
    @app.command(no_args_is_help=True)
    @handle_errors
    def export(
        batch: BatchArg,
        zip_file: Annotated[Optional[str], typer.Option("--zip", metavar="FILE", show_default=False,
                                                        help="Write a ZIP of the completed outputs (with manifest.csv and manifest.jsonl).")] = None,
        to: Annotated[Optional[str], typer.Option("--to", metavar="DIR", show_default=False,
                                                  help="Put the outputs in a folder: hard links on the same file system, copies otherwise.")] = None,
        manifest: Annotated[Optional[str], typer.Option("--manifest", metavar="FILE", show_default=False,
                                                        help="Write only the manifest: FILE.csv or FILE.jsonl.")] = None,
        contact_sheet: Annotated[Optional[str], typer.Option("--contact-sheet", metavar="FILE", show_default=False,
                                                             help="Draw thumbnails into FILE.jpg (pages FILE-1.jpg, FILE-2.jpg ... when many).")] = None,
        compare: Annotated[bool, typer.Option("--compare", help="Contact sheet of before/after pairs.")] = False,
        name_template: Annotated[Optional[str], typer.Option("--name-template", metavar="T", show_default=False,
                                                             help="Entry names from {name} {id} {stem} {ext} {i} {rel} {dir} {variant}, e.g. '{name}_{stem}_{i}.{ext}'.")] = None,
        variant: Annotated[Optional[str], typer.Option(
            "--variant", metavar="NAME", show_default=False,
            help="Only this variant's outputs (a batch with variants); a contact sheet shows the first variant unless this names another.")] = None,
        no_manifest: Annotated[bool, typer.Option("--no-manifest", help="Leave manifest.csv / manifest.jsonl out of the ZIP or folder.")] = False,
        report: Annotated[Optional[str], typer.Option("--report", metavar="FILE", show_default=False,
                                                      help="Write a CI report: FILE.xml (JUnit, one test case per item) or FILE.md (Markdown summary).")] = None,
        json_out: JsonOpt = False,
        home: HomeOpt = None,
    ) -> None:
        """Export the completed results of a batch: only outputs that still match their recorded
        sha256; the rest are listed in the manifest as missing. A running batch exports what was
        completed when the export started.

        Example: batchcli export nightly --zip nightly.zip --name-template '{name}_{stem}_{i}.{ext}'
        """
        from batchcli.cli import console
        from batchcli.engine.store import Store
        from batchcli.errors import BatchcliError, ConfigError
        from batchcli.results.dest import check_file_target
        from batchcli.results.export import _iso
        from batchcli.results.names import check_template

        if not (zip_file or to or manifest or contact_sheet or report):
            raise ConfigError("say where to export: --zip FILE, --to DIR, --manifest FILE, --contact-sheet FILE or --report FILE")
        if report:
            from batchcli.results.report import report_kind

            report_kind(report)
        if compare and not contact_sheet:
            raise ConfigError("--compare goes with --contact-sheet")
        if manifest and not manifest.lower().endswith((".csv", ".jsonl")):
            raise ConfigError(f"--manifest {manifest}: the name must end in .csv or .jsonl")
        if name_template:
            check_template(name_template)
        paths = Store(home).resolve(batch)
        for flag, target in (("--zip", zip_file), ("--manifest", manifest), ("--contact-sheet", contact_sheet),
                             ("--report", report)):
            if target:  # before any work: the export writes these last (a temp file, then a rename)
                check_file_target(paths, flag, target)
        try:
            if report and not (zip_file or to or manifest or contact_sheet):
                _report_only(paths, report, json_out)
                return
            results, lines, snap = _export(paths, zip_file, to, manifest, contact_sheet, compare,
                                           name_template, no_manifest, variant)
            if report:
                results["report"] = _write_report(paths, report, lines)
        except OSError as exc:  # an unwritable target, a full disk: one line, exit 1
            raise BatchcliError(f"cannot write {exc.filename or 'the export'}: {exc.strerror or exc}") from None
        if json_out:
            console.emit_json({"batch_id": paths.id, "running": snap.running,
                               "snapshot_at": _iso(snap.taken_at), **results})
            return
        if snap.running:
            lines.append(f"exported {snap.replay.completed} results completed as of {_iso(snap.taken_at)}; "
                         "the batch is still running")
        for key in ("zip", "folder", "manifest"):
            r = results.get(key) or {}
            if r.get("missing") or r.get("changed"):
                lines.append(f"warning: {r['missing']} output(s) missing and {r['changed']} changed since they "
                             f"were written: listed as missing (see 'batchcli verify {paths.id}')")
                break
        console.info("\n".join(lines))

    @app.command(no_args_is_help=True)
    @handle_errors
    def verify(
        batch: BatchArg,
        repair: Annotated[bool, typer.Option("--repair", help="Re-queue the broken items so that 'batchcli resume' redoes them.")] = False,
        json_out: JsonOpt = False,
        home: HomeOpt = None,
    ) -> None:
        """Recompute every output's sha256 against the journal. Exit 1 when any output is
        missing or changed.

        Example: batchcli verify nightly --repair && batchcli resume nightly
        """
        from batchcli.cli import console
        from batchcli.engine.store import Store
        from batchcli.results.verify import requeue, verify_batch

        paths = Store(home).resolve(batch)
        rep = verify_batch(paths)
        if repair and rep.bad_items:
            rep.requeued = requeue(paths, rep.bad_items)
        if json_out:
            console.emit_json(rep.as_dict())
        else:
            lines = [f"batch {paths.id}: checked {rep.checked} outputs ({_size(rep.bytes_checked)}): "
                     + ("all match the journal" if rep.clean and not rep.superseded_count else
                        f"{rep.ok} ok, {rep.missing_count} missing, {rep.changed_count} changed")
                     + (f", {rep.superseded_count} superseded" if rep.superseded_count else "")]
            for kind, rows in (("missing", rep.missing), ("changed", rep.changed)):
                for row in rows[:20]:
                    member = f" (member {row['member']})" if row.get("member") else ""
                    lines.append(f"  {kind:<8} #{row['i']}  {row['output']}{member}".replace("\n", "\\n"))
            for bid, by in rep.superseded_by.items():
                who = bid + (f" ({by['name']})" if by["name"] else "")
                lines.append(f"  superseded by {who}: {by['count']} output(s) a later batch wrote over "
                             "(its files now; nothing to repair here)")
            shown = min(20, len(rep.missing)) + min(20, len(rep.changed))
            if shown < len(rep.bad_items):
                lines.append(f"  ... and {len(rep.bad_items) - shown} more (--json lists up to 1000 of each)")
            if rep.requeued:
                lines.append(f"re-queued {plural(rep.requeued, 'item')}; run 'batchcli resume {paths.id}' to redo them")
            elif rep.bad_items:
                lines.append(f"repair with: batchcli resume {paths.id} --repair")
            console.info("\n".join(lines))
        if not rep.clean:
            raise typer.Exit(1)


def _export(paths, zip_file, to, manifest, contact_sheet, compare, name_template, no_manifest, variant=None):
    """Every form asked for, from one snapshot. Returns (results, text lines, snapshot)."""
    from batchcli.results.export import export_dir, export_manifest, export_zip
    from batchcli.results.snapshot import Snapshot

    snap = Snapshot(paths)
    snap.choose_variant(variant)
    results: dict[str, Any] = {}
    lines: list[str] = []
    if zip_file:
        r = export_zip(paths, zip_file, name_template, manifest=not no_manifest, snapshot=snap)
        results["zip"] = r.as_dict()
        lines.append(_line(r, f"to {r.target} ({_size(r.exported_bytes)}"
                           + (", ZIP64" if r.zip64 else "") + ")"))
    if to:
        r = export_dir(paths, to, name_template, manifest=not no_manifest, snapshot=snap)
        results["folder"] = r.as_dict()
        how = ", ".join(x for x in (f"{r.linked} linked" if r.linked else "",
                                    f"{r.copied} copied" if r.copied else "") if x)
        lines.append(_line(r, f"to {r.target}/" + (f" ({how})" if how else "")))
    if manifest:
        r = export_manifest(paths, manifest, name_template=name_template, snapshot=snap)
        results["manifest"] = r.as_dict()
        lines.append(f"wrote the manifest of {plural(r.manifest_rows, 'item')} to {r.target}")
    if contact_sheet:
        from batchcli.results.contact import render_contact_sheet

        c = render_contact_sheet(paths, contact_sheet, compare=compare, snapshot=snap)
        results["contact_sheet"] = c.as_dict()
        pages = c.pages[0] if len(c.pages) == 1 else f"{c.pages[0]} ... {c.pages[-1]} ({len(c.pages)} pages)"
        lines.append(f"contact sheet of {plural(c.tiles, 'item')} ({c.failed} failed"
                     + (f", {c.missing} missing" if c.missing else "") + f"): {pages}")
    return results, lines, snap


def _write_report(paths, report: str, lines: list[str]) -> dict[str, Any]:
    from batchcli.results.report import write_report

    kind = write_report(paths, report)
    lines.append(f"wrote the {'JUnit' if kind == 'junit' else 'Markdown'} report to {report}")
    return {"target": report, "kind": kind}


def _report_only(paths, report: str, json_out: bool) -> None:
    """export --report alone: any batch has a report (no completed results needed)."""
    from batchcli.cli import console

    lines: list[str] = []
    r = _write_report(paths, report, lines)
    if json_out:
        console.emit_json({"batch_id": paths.id, "report": r})
    else:
        console.info("\n".join(lines))


def _line(r: Any, where: str) -> str:
    extra = [f"{r.failed} failed"] if r.failed else []
    if r.pending:
        extra.append(f"{r.pending} pending")
    bad = r.missing + r.changed
    if bad:
        extra.append(f"{bad} missing")
    return f"exported {r.exported} results {where}" + (f"; {', '.join(extra)} listed in the manifest" if extra and r.manifest_rows else (f"; {', '.join(extra)}" if extra else ""))


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"
