"""Every command has help text and appears in the README; the CLI path stays light."""

from __future__ import annotations

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


@pytest.mark.parametrize("args", [["--help"], ["status", "--help"], ["list", "--json"], ["status", "--json"],
                                  ["ops"], ["ops", "--json"]])
def test_cli_path_does_not_import_heavy_modules(args, tmp_path):
    code = ("import sys, runpy\n"
            f"sys.argv = ['batchcli', *{args!r}]\n"
            "try:\n    runpy.run_module('batchcli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('cv2', 'numpy', 'onnxruntime', 'PIL', 'fastapi', 'starlette', 'uvicorn',\n"
            "                     'pydantic', 'websockets') if m in sys.modules]\n"
            "sys.stderr.write('HEAVY:' + ','.join(heavy))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={"BATCHCLI_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"})
    assert r.stderr.rsplit("HEAVY:", 1)[-1] == "", f"{args} imported {r.stderr}"


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


def test_a_misspelt_command_is_a_usage_error_with_suggestions():
    r = subprocess.run([sys.executable, "-m", "batchcli", "stauts"], capture_output=True, text=True)
    assert r.returncode == 2 and "No such command 'stauts'. Did you mean" in r.stderr and "'status'" in r.stderr


def test_a_start_runs_without_the_pixel_modules_in_its_own_process(tmp_path):
    """The command's process parses the pipeline, discovers, journals and writes the shards: the
    image, video and model modules (and tarfile) stay in the workers and the fork server."""
    from conftest import make_image

    for k in range(3):
        make_image(tmp_path / "in" / f"a{k}.png")
    code = ("import atexit, sys, runpy\n"
            f"sys.argv = ['batchcli', 'start', {str(tmp_path / 'in')!r}, '--out', {str(tmp_path / 'out')!r},\n"
            "            '-p', 'orient | resize 8x8', '--shards', 'tar', '--quiet', '-w', '1']\n"
            "kept = ('batchcli.imaging.imageio', 'batchcli.imaging.encode', 'batchcli.video.plan',\n"
            "        'batchcli.models.session', 'tarfile', 'cv2', 'numpy')\n"
            "atexit.register(lambda: sys.stderr.write('HEAVY:' + ','.join(m for m in kept if m in sys.modules)))\n"
            "runpy.run_module('batchcli', run_name='__main__')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={"BATCHCLI_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["00000.tar"]
    assert "HEAVY:" in r.stderr and r.stderr.rsplit("HEAVY:", 1)[-1] == "", r.stderr


def test_bench_core_takes_the_folder_it_works_in():
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_core.py"), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--work DIR" in r.stdout, r.stdout + r.stderr
