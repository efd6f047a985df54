"""The image ops, one module per family (geometry, color, detail, overlay, analyze, output).

Each module registers its ops on import in `batchcli.ops.base.REGISTRY`; the whole catalogue,
model ops included, is loaded by `batchcli.pipeline.all_ops`."""
