"""similar: near-duplicate groups from the embeddings a `model ... task=embed` batch stored."""

from typing import Annotated

import typer

from batchcli.cli.options import BatchArg, HomeOpt, JsonOpt, finite, handle_errors


def register(app: typer.Typer) -> None:
    @app.command()
    @handle_errors
    def similar(
        batch: BatchArg,
        threshold: Annotated[float, typer.Option("--threshold", "-t", metavar="T", min=-1.0, max=1.0, callback=finite,
                                                 help="Minimum cosine similarity that links two images.")] = 0.95,
        json_out: JsonOpt = False,
        home: HomeOpt = None,
    ) -> None:
        """Groups of near-duplicate images, from the vectors of a `model ... task=embed` batch.

        Example: batchcli similar photos --threshold 0.92 --json
        """
        from batchcli.cli import console
        from batchcli.engine.store import Store
        from batchcli.errors import ConfigError
        from batchcli.models.embeddings import similar as find_similar

        paths = Store(home).resolve(batch)
        try:
            data = find_similar(paths.dir, threshold)
        except ValueError as exc:
            raise ConfigError(f"similar: {exc}") from None
        if json_out:
            console.emit_json(data)
            if not data["items"]:
                raise typer.Exit(1)
            return
        if not data["items"]:
            console.info(f"batch {paths.id} has no embeddings (run a pipeline with 'model ... task=embed')")
            raise typer.Exit(1)
        rows = [[str(n), f"{g['min_similarity']:.3f}", str(it["i"]), it["src"] or ""]
                for n, g in enumerate(data["groups"], 1) for it in g["items"]]
        console.table(["group", "min sim", "#", "source"], rows)
        console.info(f"{data['count']} group(s) among {data['items']} image(s) at similarity >= {threshold:g}")
