"""What each task can honestly read from a model's outputs: shapes known when the model is
checked stop a pipeline before any item (ConfigError, exit 2); shapes known only when the model
runs fail that item (class `model`), in words, never by reading mismatched tensors."""

from __future__ import annotations

import numpy as np
import onnx_models as om
import pytest

from batchcli.errors import ConfigError, ItemError
from batchcli.ops.base import Frame
from batchcli.pipeline import Pipeline


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tmp_path_factory.mktemp("outputs")


def grey() -> Frame:
    return Frame(img=np.full((30, 40, 3), 128, np.uint8), src="test", fmt="png")


def refused(spec: str, match: str) -> str:
    with pytest.raises(ConfigError, match=match) as err:
        Pipeline.parse(spec)
    assert "Error" not in str(err.value)  # words, no Python exception names
    return str(err.value)


SSD_MISMATCH = (np.full((3, 2), 0.9, np.float32), np.array([[0.1, 0.1, 0.5, 0.5]] * 2, np.float32))


# --- detect --------------------------------------------------------------------------------------
def test_outputs_that_do_not_fit_the_decoder_stop_before_any_item(models):
    good = om.detector_ssd(models, np.array([[0.1, 0.9]], np.float32), np.array([[0.1, 0.1, 0.5, 0.5]], np.float32))
    refused(f"model {good} task=detect decoder=boxes", r"detector output \[1, 1, 2\] is not \[N,6\]")
    refused(f"model {good} task=detect decoder=yolo", r"detector output \[1, 1, 2\] is not \[1,4\+C,N\]")
    bad = om.detector_ssd(models, *SSD_MISMATCH)  # 3 score rows for 2 boxes
    refused(f"model {bad} task=detect", r"cannot tell how to decode detector output scores\[1, 3, 2\], "
                                        r"boxes\[1, 2, 4\]; set decoder=")
    refused(f"model {bad} task=detect decoder=ssd", r"scores \[1, 3, 2\] and boxes \[1, 2, 4\] do not have the same count")


def test_a_model_with_several_outputs_at_several_strides_is_refused(models):
    """YuNet's kind: scores, boxes and landmarks at three strides (12 outputs). No decoder reads
    them; auto must not pair the boxes of one stride with the scores of another."""
    shapes = {f"{k}_{s}": (n, d) for k, d in (("cls", 1), ("bbox", 4), ("kps", 10)) for s, n in ((8, 64), (16, 16))}
    path = om.several_outputs(models, shapes)
    msg = refused(f"model {path} task=detect", r"cannot tell how to decode detector output cls_8\[1, 64, 1\], .*"
                                               r"\(2 more\); set decoder=boxes\|ssd\|yolo")
    assert "ssd: two outputs" in msg
    refused(f"model {path} task=detect decoder=ssd", "decoder=ssd needs two outputs.* the model has 6")
    for task in ("classify", "segment", "embed", "image2image"):
        refused(f"model {path} task={task}", f"has 6 outputs .*task={task} reads a single output")


def test_counts_known_only_at_run_time_fail_the_item_in_words(models):
    path = om.detector_ssd(models, *SSD_MISMATCH, dynamic=True)
    op = Pipeline.parse(f"model {path} task=detect").ops[0]  # counts unknown: decided per output
    op.prepare()
    with pytest.raises(ItemError, match=r"scores \[1, 3, 2\] and boxes \[1, 2, 4\] do not have the same count") as err:
        op.apply(grey())
    assert err.value.error_class == "model"
    scores, boxes = np.array([[0.1, 0.9], [0.8, 0.2]], np.float32), np.array([[0.1, 0.1, 0.5, 0.5]] * 2, np.float32)
    op = Pipeline.parse(f"model {om.detector_ssd(models, scores, boxes, dynamic=True)} task=detect").ops[0]
    op.prepare()
    assert op.apply(grey()).meta["detect"]["count"] == 1  # the same model with matching counts works


# --- the other tasks -----------------------------------------------------------------------------
def test_classify_needs_one_score_vector(models):
    seg = om.segmenter(models, size=8)  # [1,2,8,8]: a map, not scores
    refused(f"model {seg} task=classify", r"output 'logits' \[1, 2, 8, 8\] is not one score vector; "
                                          r"task=classify needs \[N,C\] or \[N,C,1,1\]")


def test_segment_needs_a_spatial_map_and_targets_among_its_classes(models):
    cls = om.classifier(models)  # [N,4]
    refused(f"model {cls} task=segment size=8x8", r"output 'scores' \[None, 4\] is not a spatial map")
    seg = om.segmenter(models, size=8)
    refused(f"model {seg} task=segment target=5", r"segment target \[5\] does not split the model's 2 classes \(0-1\)")
    refused(f"model {seg} task=segment target=0,1", r"segment target \[0, 1\] does not split")


def test_image2image_needs_an_image_of_one_or_three_channels(models):
    seg = om.segmenter(models, size=8)
    refused(f"model {seg} task=image2image", r"output 'logits' \[1, 2, 8, 8\] has 2 channels")


# --- embed ---------------------------------------------------------------------------------------
def test_an_all_zero_embedding_fails_its_item(models):
    path = om.zero_embedder(models)
    op = Pipeline.parse(f"model {path} task=embed size=8x8").ops[0]
    op.prepare()
    with pytest.raises(ItemError, match="embedding is all zeros: a zero vector cannot be normalised") as err:
        op.apply(grey())
    assert err.value.error_class == "model"
    f = Pipeline.parse(f"model {path} task=embed size=8x8 normalize=false").run(grey())
    assert f.meta["embed"]["vector"] == [0.0, 0.0, 0.0]  # kept as it is when not normalised
