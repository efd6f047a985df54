"""serve: the HTTP API, live events and the dashboard over the same batches (extra `serve`)."""

from typing import Annotated, Optional

import typer

from batchcli.cli.options import HomeOpt, handle_errors


def register(app: typer.Typer) -> None:
    @app.command()
    @handle_errors
    def serve(
        host: Annotated[str, typer.Option("--host", metavar="HOST", help="Address to listen on; any but loopback needs a token.")] = "127.0.0.1",
        port: Annotated[int, typer.Option("--port", metavar="PORT", min=0, max=65535, help="Port (0: any free one).")] = 8750,
        token: Annotated[Optional[str], typer.Option(
            "--token", metavar="T", envvar="BATCHCLI_TOKEN", show_default=False,
            help="Require 'Authorization: Bearer T' on /api; 'auto' makes one up and prints it.")] = None,
        allow_root: Annotated[Optional[list[str]], typer.Option(
            "--allow-root", metavar="DIR", show_default=False,
            help="Folder that path inputs and outputs must lie under (repeatable; default: the current folder).")] = None,
        max_upload: Annotated[str, typer.Option("--max-upload", metavar="SIZE", help="Largest uploaded file.")] = "200M",
        max_upload_files: Annotated[int, typer.Option("--max-upload-files", metavar="N", min=1, max=100_000,
                                                      help="Most files in one upload.")] = 1000,
        cors: Annotated[Optional[list[str]], typer.Option("--cors", metavar="ORIGIN", show_default=False,
                                                          help="Allow browser calls from this origin (repeatable; default: none).")] = None,
        home: HomeOpt = None,
    ) -> None:
        """Serve the batches over HTTP: a JSON API under /api/v1, live events, a dashboard at /.

        Binds 127.0.0.1 by default. Batches started here run as detached runners: stopping the
        server stops none of them.

        Example: batchcli serve --allow-root ~/photos --port 8750
        """
        import os

        from batchcli.cli import console
        from batchcli.errors import ConfigError
        from batchcli.units import parse_bytes

        try:
            from batchcli.server.app import serve as run_server
            from batchcli.server.security import ServerConfig, new_token
        except ImportError as exc:
            raise ConfigError(f"batchcli serve needs the serve extra ({exc.name} is missing): "
                              "pip install 'batchcli[serve]'") from None
        generated = token == "auto"
        if generated:
            token = new_token()
        elif token is not None and len(token) < 8:
            raise ConfigError("--token: use at least 8 characters (or --token auto)")
        roots = [os.path.abspath(os.path.expanduser(r)) for r in (allow_root or [os.getcwd()])]
        cfg = ServerConfig(host=host, port=port, token=token or None, roots=roots, home=home,
                           max_upload=parse_bytes(max_upload, "--max-upload"), max_files=max_upload_files,
                           cors=list(cors or []))

        def ready(url: str) -> None:
            lines = [f"serving {url}  (dashboard: {url}/  API docs: {url}/docs)",
                     f"  allowed roots: {', '.join(roots)}"]
            if cfg.token:
                lines.append(f"  token: {cfg.token}" if generated else "  token: required (the one given)")
            lines.append("  Ctrl-C stops the server; batches it started keep running")
            console.info("\n".join(lines))

        run_server(cfg, on_ready=ready)
