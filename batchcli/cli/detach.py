"""The detached runner's process: one batch run, plain progress lines to stdout (the batch's
log.txt). Started by `batchcli.engine.spawn.spawn_detached` (`python -m batchcli.cli.detach`)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys

from batchcli.engine.runner import RunOptions
from batchcli.engine.store import BatchPaths
from batchcli.errors import BatchcliError


def main(argv: list[str] | None = None) -> int:
    """The detached child: run one batch, plain progress lines to stdout (the batch's log)."""
    ap = argparse.ArgumentParser(prog="batchcli.detach")
    ap.add_argument("batch_dir")
    ap.add_argument("options")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--retry-failed", action="store_true")
    ap.add_argument("--repair", action="store_true")
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--expect", action="append")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from batchcli.cli import console
    from batchcli.cli.finish import Finish
    from batchcli.engine.runner import Runner
    from batchcli.results.verify import find_bad

    console.setup_streams()
    fields = {f.name for f in dataclasses.fields(RunOptions)}
    opts = RunOptions(**{k: v for k, v in json.loads(a.options).items() if k in fields})
    paths = BatchPaths(a.batch_dir)
    finish = Finish(paths, opts)
    try:
        with console.ProgressView("plain") as view:
            result = Runner(paths, opts, finish.tap(view)).run(resume=a.resume, requeue_failed=a.retry_failed,
                                                   repair=find_bad(paths) if a.repair else (),
                                                   force=a.force,
                                                   expect=tuple(a.expect) if a.expect else None)
    except BatchcliError as exc:
        console.error(str(exc))
        return exc.exit_code
    console.summary(result)
    finish.done(result)
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
