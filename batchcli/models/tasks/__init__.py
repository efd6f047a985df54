"""The model op's tasks, one module each, by the name `task=` takes (in the order `ops` lists them)."""

from __future__ import annotations

from batchcli.models.tasks.base import Task
from batchcli.models.tasks.classify import Classify
from batchcli.models.tasks.detect import Detect
from batchcli.models.tasks.embed import Embed
from batchcli.models.tasks.image2image import Image2Image
from batchcli.models.tasks.segment import Segment

TASKS: dict[str, type[Task]] = {t.name: t for t in (Classify, Detect, Segment, Image2Image, Embed)}
