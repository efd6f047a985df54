"""The HTTP face (`batchcli serve`): a JSON API under /api/v1, live events from the journals, and a
dashboard at /. Like the CLI it calls `batchcli.api` and the engine's read side; batches it starts
run as detached runners. Needs the `serve` extra (FastAPI, uvicorn); no other command imports it."""
