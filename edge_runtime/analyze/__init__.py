"""`emo-edge analyze`: per-video tables, per-track summaries and a timeline plot, for recordings.

- :mod:`.video`: one video (:func:`analyze_video`, the Python API), resumable, outputs written atomically
- :mod:`.options`: what an analysis is asked (:class:`AnalyzeOptions`, the resume key) and gives (:class:`VideoResult`, the columns)
- :mod:`.inputs`: a video file or URL, its identity, what a recording must say of itself
- :mod:`.folder`: a video's output folder: complete or not (resume), claimed for a new analysis
- :mod:`.outputs`: the rows as they stream, then frames.csv, tracks.csv, timeline.png, summary.json
- :mod:`.tracks`: the track rule (split pieces of one face merged, flicker dropped) over the
  track ledger's sums (:mod:`emo.edge_runtime.ledger`, shared with the MQTT sink)
- :mod:`.jobs`: the videos named, each one's output folder, one job
- :mod:`.batch`: many videos (:func:`analyze_batch`), in worker processes (:mod:`.workers`) when asked
- :mod:`.timeline`: the timeline picture
- :mod:`.ray_runner`: `--ray`, the videos cut into time chunks (:mod:`.chunks`) run on a Ray
  cluster (the driver's loop: :mod:`.ray_driver`) and stitched (:mod:`.stitch`, boundary by
  boundary: :mod:`.stitcher`; finished chunks kept: :mod:`.chunkstore`) into the outputs of a
  local run; the only module that imports ray
"""
from .batch import EXIT_ALL, EXIT_NONE, EXIT_SOME, EXIT_USAGE, analyze_batch
from .options import FRAME_COLUMNS, OUTPUTS, SUMMARY, TRACK_COLUMNS, AnalyzeOptions, VideoResult
from .tracks import TRACK_RULE, TrackLedger, TrackStats, TrackSums, consolidate
from .video import analyze_video

__all__ = ["AnalyzeOptions", "EXIT_ALL", "EXIT_NONE", "EXIT_SOME", "EXIT_USAGE", "FRAME_COLUMNS", "OUTPUTS", "SUMMARY",
           "TRACK_COLUMNS", "TRACK_RULE", "TrackLedger", "TrackStats", "TrackSums", "VideoResult", "analyze_batch",
           "analyze_video", "consolidate"]
