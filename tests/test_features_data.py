"""Stage 4 (features, cache) and the training data layouts."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import MULTIMODAL, make_video, need
from kvcap import data as datasets
from kvcap.errors import KvcapError
from kvcap.features import Encoder, FeatureCache, encode_files, load_image


@pytest.fixture(scope="module")
def encoders():
    return Encoder("torch"), Encoder("onnx")


def test_encoder_shapes_and_backends_agree(encoders, videos):
    from kvcap.frames import sample_frames

    frames = sample_frames(videos / "cockatoo.mp4", 3)
    torch_out, onnx_out = (e.encode(frames) for e in encoders)
    assert torch_out.shape == (3, 49, 1280)
    assert np.abs(torch_out - onnx_out).max() < 1e-3
    # the pooled feature is the network's own average pool: different images, different features
    pooled = torch_out.mean(axis=1)
    assert np.linalg.norm(pooled[0] - pooled[2]) > 0


def test_lite2_reads_the_same_grid_with_its_own_weights(encoders, videos, tmp_path):
    """The second encoder: its own ImageNet weights (it tells a cockatoo from the frames), the
    same (49, 1280) grid, the same numbers through ONNX Runtime, and its own cache entries."""
    from kvcap.features import classifier_head
    from kvcap.frames import sample_frames

    frames = sample_frames(videos / "cockatoo.mp4", 3)
    lite2 = Encoder("torch", name="efficientnet-lite2").encode(frames)
    assert lite2.shape == (3, 49, 1280)
    assert np.abs(lite2 - Encoder("onnx", name="efficientnet-lite2").encode(frames)).max() < 1e-3
    w, b = classifier_head("efficientnet-lite2")
    assert ((lite2.mean(axis=1) @ w.T + b).argmax(axis=1) == 89).sum() >= 2  # 89: sulphur-crested cockatoo
    assert np.abs(lite2 - encoders[0].encode(frames)).mean() > 0.05  # not Lite0's features
    img = tmp_path / "a.png"
    Image.fromarray(frames[0]).save(img)
    cache = FeatureCache(tmp_path / "cache", "efficientnet-lite2")
    with pytest.raises(ValueError, match="efficientnet-lite0 features"):
        encode_files([img], encoder=encoders[1], cache=cache, progress=False)
    feats, _ = encode_files([img], cache=cache, progress=False)  # the cache's own encoder
    assert np.abs(feats[0].astype(np.float32) - lite2[0]).max() < 0.02  # float16 on disk
    assert encode_files([img], cache=FeatureCache(tmp_path / "cache"), progress=False)[0][0].tolist() != feats[0].tolist()


def test_images_are_resized_whole_not_cropped(tmp_path):
    img = np.zeros((100, 400, 3), np.uint8)
    img[:, :50] = 255  # a white band at the far left survives a whole resize, not a centre crop
    Image.fromarray(img).save(tmp_path / "wide.png")
    arr = load_image(tmp_path / "wide.png")
    assert arr.shape == (224, 224, 3) and arr[:, :20].mean() > 200


def test_feature_cache_is_keyed_by_content(tmp_path, encoders):
    a = tmp_path / "a.png"
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(a)
    b = tmp_path / "renamed.png"
    shutil.copy(a, b)
    cache = FeatureCache(tmp_path / "cache")
    feats, ok = encode_files([a], encoder=encoders[1], cache=cache, progress=False)
    assert ok == [0] and feats.dtype == np.float16
    assert cache.key(a) == cache.key(b)  # same content, same entry: no second CNN pass
    assert np.array_equal(cache.get(cache.key(b)), feats[0])
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(b)
    assert cache.key(a) != cache.key(b)


def test_unreadable_images_are_reported_not_fatal(tmp_path, encoders):
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(good)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 broken")
    errors = []
    feats, ok = encode_files([bad, good, tmp_path / "gone.jpg"], encoder=encoders[1],
                             cache=FeatureCache(tmp_path / "c"), progress=False,
                             on_error=lambda i, e: errors.append((i, str(e))))
    assert ok == [1] and feats.shape[0] == 1
    assert sorted(i for i, _ in errors) == [0, 2]


def test_aihub_coco_layout_with_bad_records(tmp_path):
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "x.jpg")
    records = [
        {"file_path": "x.jpg", "captions": ["A dog."], "caption_ko": ["개가 있다."], "id": 1},
        {"file_path": "x.jpg", "captions": ["No Korean."], "id": 2},
        {"file_path": "missing.jpg", "caption_ko": ["없다."], "id": 3},
        "not a record",
    ]
    (tmp_path / "d.json").write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    notes = []
    examples = datasets.load(tmp_path / "d.json", "aihub-coco", report=notes.append)
    assert [e.id for e in examples] == ["1"]
    assert any("record 2" in n for n in notes) and any("record 3" in n for n in notes)
    (tmp_path / "broken.json").write_text("[{")
    with pytest.raises(KvcapError, match="not valid JSON"):
        datasets.load(tmp_path / "broken.json", "aihub-coco")
    (tmp_path / "dict.json").write_text("{}")
    with pytest.raises(KvcapError, match="expected a JSON list"):
        datasets.load(tmp_path / "dict.json", "aihub-coco")


def test_aihub_multimodal_layout_with_frames_the_test_writes(tmp_path):
    label = json.loads(need(MULTIMODAL).read_text(encoding="utf-8"))
    shot = label["shot_infos"][0]
    for info in shot["visual_infos"][:3]:  # only the first three frames exist
        folder = tmp_path / shot["image_folder"]
        folder.mkdir(exist_ok=True)
        Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(folder / info["image_id"])
    notes = []
    examples = datasets.load(MULTIMODAL, "aihub-multimodal", root=tmp_path, report=notes.append)
    assert len(examples) == 3
    assert all(len(e.captions) == 5 for e in examples)
    assert examples[0].captions[0] == shot["visual_infos"][0]["image_descs"][0]
    assert notes and all("media file not found" in n for n in notes)


def test_jsonl_layout_with_images_and_a_video(tmp_path):
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "a.png")
    make_video(tmp_path / "clip.mp4", [(100, 100, 100)], seconds_each=1.0)
    lines = [
        json.dumps({"media": "a.png", "captions": ["검은 화면이다."]}, ensure_ascii=False),
        json.dumps({"media": "clip.mp4", "captions": ["회색 화면이 보인다."]}, ensure_ascii=False),
        "{broken",
        json.dumps({"media": "a.png"}),
    ]
    (tmp_path / "mine.jsonl").write_text("\n".join(lines), encoding="utf-8")
    notes = []
    examples = datasets.load(tmp_path / "mine.jsonl", "jsonl", report=notes.append)
    assert [e.media[0].name for e in examples] == ["a.png", "clip.mp4"]
    assert any(n.startswith("line 3") for n in notes) and any(n.startswith("line 4") for n in notes)


def test_split_is_by_example_and_puts_most_references_in_test():
    exs = [datasets.Example(str(i), [], ["c"] * (5 if i < 10 else 2)) for i in range(100)]
    train, val, test = datasets.split(exs, 0.05, 0.05, seed=0)
    assert len(test) == 5 and len(val) == 5 and len(train) == 90
    assert all(len(e.captions) == 5 for e in test + val)
    assert not {e.id for e in train} & {e.id for e in val + test}


def test_video_examples_become_multi_frame_segments(tmp_path):
    from kvcap.train import TrainConfig, example_features

    make_video(tmp_path / "clip.mp4", [(200, 40, 40), (40, 40, 200)], seconds_each=1.0)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "a.png")
    examples = [datasets.Example("v", [tmp_path / "clip.mp4"], ["영상이다."]),
                datasets.Example("i", [tmp_path / "a.png"], ["검은 화면이다."]),
                datasets.Example("bad", [tmp_path / "a.png", tmp_path / "gone.png"], ["없다."])]
    notes = []
    cfg = TrainConfig(data="x", cache=str(tmp_path / "cache"), quiet=True, video_frames=4)
    feats, kept = example_features(examples, cfg, notes.append)
    assert kept == [0, 1]
    assert feats[0].shape == (4, 49, 1280) and feats[1].shape == (1, 49, 1280)
    assert not np.allclose(feats[0][0], feats[0][3])  # frames from both scenes, not one frame four times
    assert any("record bad" in n for n in notes)
    again, _ = example_features(examples[:1], cfg, notes.append)  # second time from the cache
    assert np.array_equal(again[0], feats[0])


def test_an_existing_file_name_with_brackets_is_not_a_glob(tmp_path):
    from kvcap.inputs import expand_inputs

    (tmp_path / "clip[1].mp4").write_bytes(b"x")
    (tmp_path / "clip1.mp4").write_bytes(b"y")  # what the pattern clip[1].mp4 would match
    assert expand_inputs([str(tmp_path / "clip[1].mp4")]) == [tmp_path / "clip[1].mp4"]
    assert expand_inputs([str(tmp_path / "clip[0-9].mp4")]) == [tmp_path / "clip1.mp4"]  # a real pattern still expands
