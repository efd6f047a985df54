"""`batchcli ops`: every op with its parameters, as a table, plain lines or JSON."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from batchcli.cli.app import app  # registers every command module, ops_cmd among them
from batchcli.pipeline import all_ops

EXPECTED = {"orient", "resize", "crop", "rotate", "flip", "pad", "preset", "lut", "autolevel", "whitebalance",
            "clahe", "sharpen", "denoise", "watermark", "analyze", "convert"}


def _app():
    return app


def test_ops_json_lists_every_op_with_params():
    result = CliRunner().invoke(_app(), ["ops", "--json"], catch_exceptions=False)
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    ops = {o["name"]: o for o in data["ops"]}
    assert EXPECTED <= set(ops)
    for op in data["ops"]:
        assert op["summary"]
        for p in op["params"]:
            assert p["help"], f"{op['name']}.{p['name']} has no help"
            assert {"name", "kind", "required", "default", "positional", "choices", "help"} <= set(p)
    resize = {p["name"]: p for p in ops["resize"]["params"]}
    assert resize["mode"]["default"] == "fit" and "percent" in resize["mode"]["choices"]
    assert ops["analyze"]["writes_image"] is False


def test_ops_plain_lines_without_a_terminal():
    result = CliRunner().invoke(_app(), ["ops"], catch_exceptions=False)
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split("\t") == ["op", "parameter", "default", "help"]
    names = {line.split("\t")[0] for line in lines[1:]} - {""}
    assert EXPECTED <= names
    assert any(line.startswith("\tquality=\t90\t") for line in lines)


def test_every_registered_op_is_documented():
    for name, cls in all_ops().items():
        assert cls.summary, name
        assert all(p.help for p in cls.params), name


def test_each_op_s_module_is_known_and_a_pipeline_imports_only_its_own():
    """get_op imports only the module of the op it is asked for (OP_MODULES: every op, and the
    module that registers it); an unknown name still loads them all before it is refused."""
    import subprocess
    import sys

    from batchcli.ops.base import REGISTRY
    from batchcli.pipeline import OP_MODULES, all_ops

    all_ops()
    assert OP_MODULES == {name: cls.__module__ for name, cls in REGISTRY.items()
                          if cls.__module__.startswith("batchcli.")}  # (not the tests' own ops)
    code = ("import sys; from batchcli.pipeline import Pipeline; Pipeline.parse('resize 8x8 | convert png'); "
            "print(sorted(m for m in sys.modules if m.startswith(('batchcli.ops.', 'batchcli.models.'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "batchcli.ops.geometry" in out and "batchcli.ops.output" in out
    assert "batchcli.ops.color" not in out and "batchcli.models.faces" not in out
    code = ("from batchcli.pipeline import Pipeline\ntry:\n    Pipeline.parse('resise 8x8')\n"
            "except Exception as exc:\n    print(exc)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "unknown operation 'resise'" in out and "watermark" in out  # every op named
