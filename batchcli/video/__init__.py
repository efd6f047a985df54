"""Videos: header checks, segmented transcoding with per-frame pipelines, stills and thumbnails.

Its own floor beside the executors: the worker calls `job.process_video` for a video item and
passes the pipeline in as data (this package never imports the pipeline or the engine). PyAV
(FFmpeg's libraries) is imported on first use, in the worker, never on the CLI's start-up path.

- probe.py: what a video is before any frame is decoded (sniffing, duration, size, frame count
  against the limits; corrupt and truncated files as one-line item errors)
- plan.py: what the pipeline asks of a video (trim, frames, thumbnail, container and codec)
- codecs.py: encoders, containers and the audio policy (copy when the container takes it)
- segments.py: the segmented transcode (each segment durable and reported) and the join
- stills.py: `frames` and `thumbnail`
- job.py: one video item, start to finish, resuming from the segments already done
"""
