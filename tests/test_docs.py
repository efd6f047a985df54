"""Every command has help text and appears in the README; the CLI path stays light."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest
from conftest import ROOT
from typer.main import get_command

from batchcli.cli.app import app

COMMANDS = sorted(get_command(app).commands)  # type: ignore[attr-defined]


def test_core_commands_exist():
    for name in ("start", "status", "list"):
        assert name in COMMANDS


@pytest.mark.parametrize("name", COMMANDS)
def test_command_has_help_and_is_in_readme(name):
    cmd = get_command(app).commands[name]  # type: ignore[attr-defined]
    assert cmd.help and len(cmd.help.strip()) > 10, f"{name} has no help text"
    readme = (ROOT / "README.md").read_text()
    assert f"batchcli {name}" in readme, f"'batchcli {name}' is not in the README"


def test_readme_opens_with_the_two_commands():
    head = (ROOT / "README.md").read_text().splitlines()[:25]
    text = "\n".join(head)
    assert "make demo" in text and "make test" in text


def _imported(argv: list[str], names: tuple[str, ...], tmp_path) -> tuple[subprocess.CompletedProcess, list[str] | None]:
    """Run `batchcli ARGV` in a fresh interpreter: its result, and which of `names` its own process
    had imported as it ended (None when it never got to say)."""
    code = ("import atexit, sys, runpy\n"
            f"sys.argv = ['batchcli', *{argv!r}]\n"
            f"atexit.register(lambda: sys.stderr.write('IMPORTED:' + ','.join(m for m in {names!r} if m in sys.modules)))\n"
            "runpy.run_module('batchcli', run_name='__main__')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={"BATCHCLI_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"})
    if "IMPORTED:" not in r.stderr:
        return r, None
    return r, [m for m in r.stderr.rsplit("IMPORTED:", 1)[1].split(",") if m]


@pytest.mark.parametrize("args", [["--help"], ["status", "--help"], ["list", "--json"], ["status", "--json"],
                                  ["ops"], ["ops", "--json"]])
def test_cli_path_does_not_import_heavy_modules(args, tmp_path):
    r, heavy = _imported(args, ("cv2", "numpy", "onnxruntime", "PIL", "fastapi", "starlette", "uvicorn",
                                "pydantic", "websockets"), tmp_path)
    assert heavy == [], f"{args} imported {heavy}: {r.stderr}"


def test_version_is_fast_path():
    r = subprocess.run([sys.executable, "-m", "batchcli", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("batchcli ")


@pytest.mark.parametrize("args, built", [
    (["status", "--json"], ["status"]), (["--home", "h", "list"], ["list"]), (["--home=h", "sync", "a"], ["sync"]),
    (["--help"], COMMANDS), ([], COMMANDS), (["stauts"], COMMANDS), (["--version"], COMMANDS),
])
def test_a_command_builds_only_itself_and_anything_else_the_whole_app(args, built):
    from batchcli.cli.app import app_for

    assert sorted(get_command(app_for(args)).commands) == built  # type: ignore[attr-defined]
    assert sorted(get_command(app).commands) == COMMANDS  # the app itself is left whole


def test_the_commands_parameters_are_read_without_compiling_anything():
    """Typer reads each command's parameters from its signature, twice over (inspect.signature and
    get_type_hints). Annotations kept as strings (`from __future__ import annotations` in the
    command modules) were compiled and evaluated there, about 200 compiles for `start` and the
    commands derived from it: several milliseconds of every start, before any work."""
    import builtins
    import inspect

    from batchcli.cli.app import app_for

    compiled = []
    real = builtins.compile

    def counting(source, *args, **kw):
        compiled.append(source)
        return real(source, *args, **kw)

    builtins.compile = counting
    try:
        for name in COMMANDS:
            for cmd in app_for([name]).registered_commands:
                assert not any(isinstance(a, str) for a in inspect.get_annotations(inspect.unwrap(cmd.callback)).values()), name
            get_command(app_for([name]))
    finally:
        builtins.compile = real
    assert compiled == []


def test_a_misspelt_command_is_a_usage_error_with_suggestions():
    r = subprocess.run([sys.executable, "-m", "batchcli", "stauts"], capture_output=True, text=True)
    assert r.returncode == 2 and "No such command 'stauts'. Did you mean" in r.stderr and "'status'" in r.stderr


def test_a_start_runs_without_the_pixel_modules_in_its_own_process(tmp_path):
    """The command's process parses the pipeline, discovers, journals and writes the shards: the
    image, video and model modules (and tarfile) stay in the workers and the fork server."""
    from conftest import make_image

    for k in range(3):
        make_image(tmp_path / "in" / f"a{k}.png")
    r, kept = _imported(["start", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "-p", "orient | resize 8x8",
                         "--shards", "tar", "--quiet", "-w", "1"],
                        ("batchcli.imaging.imageio", "batchcli.imaging.encode", "batchcli.video.plan",
                         "batchcli.models.session", "tarfile", "cv2", "numpy"), tmp_path)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["00000.tar"]
    assert kept == [], r.stderr


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "benchmarks").glob("bench_*.py")))
def test_every_benchmark_explains_itself_and_refuses_what_it_does_not_know(script):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("usage: ") and "Traceback" not in r.stderr, r.stdout + r.stderr
    first = ast.get_docstring(ast.parse((ROOT / "benchmarks" / script).read_text())).split("\n\n")[0]
    assert " ".join(first.split()) in " ".join(r.stdout.split())  # its whole first paragraph, not a cut line
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--no-such-flag"], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr


def test_bench_core_takes_the_folder_it_works_in(tmp_path):
    bench = [sys.executable, str(ROOT / "benchmarks" / "bench_core.py")]
    r = subprocess.run([*bench, "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--work DIR" in r.stdout, r.stdout + r.stderr
    r = subprocess.run([*bench, "--only", "none", "--work", str(tmp_path / "w")], capture_output=True, text=True)
    last = r.stdout.strip().splitlines()[-1]  # its last row: what creating a file cost there, at the start
    assert r.returncode == 0 and last.startswith("creating a file in the work folder (--work)") and last.endswith(" us"), r.stdout
    assert int(last.split()[-2]) > 0 and list((tmp_path / "w").iterdir()) == []  # the probe's files went with the run's
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    r = subprocess.run([*bench, "--only", "none", "--work", str(not_a_folder)], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == f"bench_core.py: error: --work {not_a_folder}: cannot make files there (File exists)"
