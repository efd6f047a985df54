"""ops: the operations a pipeline can use, with their parameters, defaults and help."""

import typer

from batchcli.cli.options import JsonOpt, handle_errors


def catalog() -> dict:
    """{"ops": [{"name", "summary", "writes_image", "params": [Param.describe(), ...]}, ...]}, by name."""
    from batchcli.pipeline import all_ops

    return {"ops": [
        {"name": name, "summary": cls.summary, "writes_image": cls.writes_image,
         "params": [p.describe() for p in cls.params]}
        for name, cls in all_ops().items()
    ]}


def _default(p: dict) -> str:
    if p["required"]:
        return "(required)"
    value = p["default"]
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)) and p["kind"] == "color" and len(value) == 3:
        return f"#{value[2]:02x}{value[1]:02x}{value[0]:02x}"
    return "" if value in ("", None) else str(value)


def register(app: typer.Typer) -> None:
    @app.command("ops")
    @handle_errors
    def ops(json_out: JsonOpt = False) -> None:
        """List the pipeline operations, their parameters, defaults and help.

        Example: batchcli ops --json | jq '.ops[].name'
        """
        from batchcli.cli import console

        data = catalog()
        if json_out:
            console.emit_json(data)
            return
        rows = []
        for op in data["ops"]:
            rows.append([op["name"], "", "", op["summary"]])
            for p in op["params"]:
                name = p["name"].upper() if p["positional"] else f"{p['name']}="
                listed = all(c in p["help"] for c in p["choices"])
                choices = f" ({', '.join(p['choices'])})" if p["choices"] and not listed else ""
                rows.append(["", name, _default(p), p["help"] + choices])
        console.table(["op", "parameter", "default", "help"], rows)
