"""batchcli: batch-process image folders with a durable journal."""

__version__ = "0.1.0"
