"""A video library: resumable batch captioning, caption search, and the Ray engine."""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from kvcap.batch import MANIFEST, plan, run_batch
from kvcap.search import jamo, search, update_index


def kvcap(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kvcap", *map(str, args)], capture_output=True, text=True,
                          timeout=900, **kw)


def write_result(folder: Path, name: str, captions: list[str]) -> None:
    segs = [{"start": 5.0 * i, "end": 5.0 * (i + 1), "text": c, "score": 0.5} for i, c in enumerate(captions)]
    (folder / f"{name}.json").write_text(json.dumps({"input": f"{name}.mp4", "segments": segs, "model": "m"},
                                                    ensure_ascii=False), encoding="utf-8")


@pytest.fixture
def caption_set(tmp_path) -> Path:
    write_result(tmp_path, "cat_sofa", ["검은 고양이가 소파에 누워 있다.", "고양이가 창밖을 보고 있다."])
    write_result(tmp_path, "cat_walk", ["검은 고양이가 길을 걷고 있다."])
    write_result(tmp_path, "men_walk", ["두 남자가 길을 걸어가고 있다."])
    write_result(tmp_path, "woman", ["여자가 걷는 모습이다."])
    write_result(tmp_path, "dog", ["개가 공원에서 달리고 있다.", "흰 개가 물속을 뛰어다니고 있다."])
    write_result(tmp_path, "bike", ["자전거를 탄 남자가 언덕을 오르고 있다."])
    update_index(tmp_path)
    return tmp_path


def videos_of(hits) -> list[str]:
    return [h.video for h in hits]


def test_inflected_forms_match_the_lemma(caption_set):
    # '걷는', '걸어가고', '걷고 있다' all match '걷다'
    assert set(videos_of(search("걷다", caption_set))) == {"cat_walk.mp4", "men_walk.mp4", "woman.mp4"}


def test_several_words_rank_fuller_matches_first(caption_set):
    hits = search("검은 고양이가 걷다", caption_set)
    assert videos_of(hits)[0] == "cat_walk.mp4"  # all three words
    assert videos_of(hits)[1] == "cat_sofa.mp4" and hits[1].start == 0.0  # 검은 + 고양이
    hits = search("고양이가 소파에 누워 있는 장면", caption_set)
    assert (hits[0].video, hits[0].start) == ("cat_sofa.mp4", 0.0)


def test_no_hit(caption_set):
    assert search("비행기가 날다", caption_set) == []


def test_typos_and_spacing_errors(caption_set):
    assert videos_of(search("검은고양이가걷다", caption_set))[0] == "cat_walk.mp4"  # no spaces at all
    assert "cat_sofa.mp4" in videos_of(search("고양리", caption_set))  # one letter wrong
    assert videos_of(search("자전어를 탄 남자", caption_set))[0] == "bike.mp4"
    assert jamo("고양이") == "ㄱㅗㅇㅑㅇㅇㅣ"


def test_index_is_incremental(caption_set):
    write_result(caption_set, "dog", ["개가 눈 위에서 뛰고 있다."])  # changed
    (caption_set / "bike.json").unlink()  # removed
    write_result(caption_set, "bird", ["앵무새가 나뭇가지에 앉아 있다."])  # added
    stats = update_index(caption_set)
    assert (stats["added"], stats["updated"], stats["removed"], stats["unchanged"]) == (1, 1, 1, 4)
    assert search("자전거", caption_set) == []
    assert videos_of(search("앵무새", caption_set)) == ["bird.mp4"]
    assert [h.text for h in search("공원", caption_set)] == []


def test_search_cli(caption_set):
    r = kvcap("search", "걷다", "--index", caption_set, "--json")
    assert r.returncode == 0, r.stderr
    assert {json.loads(l)["video"] for l in r.stdout.splitlines()} == {"cat_walk.mp4", "men_walk.mp4", "woman.mp4"}
    r = kvcap("search", "걷다", "--index", caption_set / "nothing")
    assert r.returncode == 2 and "kvcap index" in r.stderr


def test_plan_mirrors_folders(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for p in ("a/x.mp4", "b/x.mp4"):
        (tmp_path / p).write_bytes(b"")
    tasks = plan([tmp_path / "a/x.mp4", tmp_path / "b/x.mp4"], ["json"])
    assert [t.stem for t in tasks] == ["a/x", "b/x"]


@pytest.fixture(scope="module")
def library(videos, tmp_path_factory) -> Path:
    lib = tmp_path_factory.mktemp("library")
    for name in ("carphone_tiny.mp4", "desk_window_short.mp4", "street_bikes.mp4"):
        shutil.copy(videos / name, lib / name)
    (lib / "clips").mkdir()
    shutil.copy(videos / "classroom.gif", lib / "clips" / "classroom.gif")
    (lib / "clips" / "broken.mp4").write_text("not a video")
    return lib


def test_batch_resumes_skips_and_redoes_changes(library, tmp_path):
    out = tmp_path / "out"
    r = kvcap("batch", library, "--out", out, "--workers", "2", "--json", "--quiet")
    assert r.returncode == 1, r.stderr  # one bad file: reported, batch finished, non-zero exit
    first = json.loads(r.stdout)
    assert (first["done"], first["failed"], first["skipped"]) == (4, 1, 0)
    assert "broken.mp4" in r.stderr and "Traceback" not in r.stderr
    assert (out / "clips" / "classroom.srt").exists() and (out / "street_bikes.json").exists()
    rows = {Path(p).name: (s, h) for p, s, h in sqlite3.connect(out / MANIFEST).execute(
        "SELECT path, status, hash FROM items")}
    assert rows["broken.mp4"][0] == "failed" and rows["street_bikes.mp4"][0] == "done"
    # rerun: finished items are skipped; a changed input is redone
    shutil.copy(library / "carphone_tiny.mp4", tmp_path / "keep.mp4")
    shutil.copy(library / "desk_window_short.mp4", library / "carphone_tiny.mp4")
    r = kvcap("batch", library, "--out", out, "--json", "--quiet")
    again = json.loads(r.stdout)
    assert (again["done"], again["skipped"], again["failed"]) == (1, 3, 1)
    shutil.copy(tmp_path / "keep.mp4", library / "carphone_tiny.mp4")
    # a deleted output makes its item due again
    (out / "street_bikes.srt").unlink()
    r = kvcap("batch", library, "--out", out, "--json", "--quiet")
    assert json.loads(r.stdout)["done"] == 2  # carphone (changed back) and street_bikes


def test_batch_then_search_finds_a_produced_caption(library, tmp_path):
    from kvcap import korean

    out = tmp_path / "o"
    summary = run_batch([library / "street_bikes.mp4", library / "carphone_tiny.mp4"], out, formats=["json"],
                        workers=1, progress=False, report=lambda m: None)
    assert summary.done == 2
    assert kvcap("index", out, "--quiet").returncode == 0
    data = json.loads((out / "street_bikes.json").read_text(encoding="utf-8"))
    seg = data["segments"][-1]
    word = max(korean.lemmas(seg["text"]), key=len)
    hits = search(word, out, limit=50)
    assert any(h.video == data["input"] and h.start == seg["start"] and h.end == seg["end"] for h in hits)


def test_ray_engine_writes_the_same_outputs(library, tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is not installed here (pip install 'kvcap[ray]')")
    inputs = [library / "carphone_tiny.mp4", library / "desk_window_short.mp4"]
    local = run_batch(inputs, tmp_path / "local", formats=["srt", "json"], workers=1, progress=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = run_batch(inputs, tmp_path / "ray", formats=["srt", "json"], workers=2, engine="ray", progress=False)
    finally:
        ray.shutdown()
    assert remote.done == local.done == 2
    for name in ("carphone_tiny.srt", "desk_window_short.json"):
        assert (tmp_path / "ray" / name).read_text() == (tmp_path / "local" / name).read_text()
    assert (tmp_path / "ray" / MANIFEST).exists()


def test_batch_killed_halfway_loses_only_items_in_flight(library, tmp_path):
    import signal
    import time

    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "kvcap", "batch", str(library), "--out", str(out), "--workers", "1",
                             "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    finished = 0
    while time.time() < deadline and proc.poll() is None and finished == 0:
        time.sleep(0.1)
        if (out / MANIFEST).exists():
            try:
                finished = sqlite3.connect(out / MANIFEST).execute(
                    "SELECT COUNT(*) FROM items WHERE status = 'done'").fetchone()[0]
            except sqlite3.Error:
                pass
    assert proc.poll() is None and finished >= 1, "the batch ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    leftovers = [p.name for p in out.rglob("*") if ".part" in p.name]
    assert leftovers == []
    r = kvcap("batch", library, "--out", out, "--json", "--quiet")
    summary = json.loads(r.stdout)
    assert summary["skipped"] >= finished
    assert summary["done"] + summary["skipped"] == 4 and summary["failed"] == 1


def test_batch_from_file_list(library, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(f"# my videos\n{library / 'carphone_tiny.mp4'}\n\n{library / 'clips' / 'classroom.gif'}\n")
    r = kvcap("batch", "--from-file", listing, "--out", tmp_path / "o", "--json", "--quiet", "--workers", "1")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["done"] == 2
    assert kvcap("batch", "--out", tmp_path / "o2", "--quiet").returncode == 2  # no inputs at all


def test_a_piece_of_a_compound_is_no_typo_of_another_word(tmp_path):
    write_result(tmp_path, "suit", ["정장을 입은 남자가 서 있다."])
    update_index(tmp_path)
    assert search("우주정거장", tmp_path) == []  # 우주 + 정거장; 정거장 is two edits from 정장
    assert videos_of(search("정장", tmp_path)) == ["suit.mp4"]
    assert videos_of(search("정잔", tmp_path)) == ["suit.mp4"]  # a real one-letter typo still matches
