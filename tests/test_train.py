"""Training: a real (small) run on koflickr, resume after a kill, DDP on two CPU processes, folds."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import MULTIMODAL, both_datasets, need

from kvcap import modelfile
from kvcap.train import TrainConfig, fit

SMALL = ["--limit", "160", "--val-fraction", "0.1", "--test-fraction", "0.1", "--hidden-dim", "48", "--embed-dim", "32", "--attn-dim", "32", "--batch-size", "16",
         "--min-count", "2", "--quiet"]


def small_cfg(data, out, **kw) -> TrainConfig:
    base = dict(data=str(data), out=str(out), limit=160, hidden_dim=48, embed_dim=32, attn_dim=32, batch_size=16,
                min_count=2, quiet=True, epochs=3, patience=10, val_fraction=0.1, test_fraction=0.1)
    base.update(kw)
    return TrainConfig(**base)


def kvcap(*args, env=None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kvcap", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, **kw)


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)


@pytest.fixture(scope="module")
def reference_run(koflickr, tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "ref"
    result = fit(small_cfg(koflickr, out))
    return out, result


def test_training_writes_a_loadable_model_folder(reference_run):
    out, result = reference_run
    loaded = modelfile.load(out)  # config.json + model.safetensors + vocab.json
    assert loaded.model.config.arch == "attend"
    rows = list(csv.DictReader(open(out / "train_log.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert "CIDEr-D" in result["test"]["koflickr"] and "noun_precision" in result["test"]["koflickr"]
    assert json.loads((out / "split.json").read_text())["datasets"]["koflickr"]["test"]
    config = json.loads((out / "config.json").read_text())
    assert config["validation"]["epoch"] == result["best_epoch"]  # the kept model is the best one


def test_resume_after_a_stop_gives_the_same_model(koflickr, reference_run, tmp_path):
    out = tmp_path / "stopped"
    fit(small_cfg(koflickr, out, stop_after=1))
    assert json.loads((out / "checkpoint" / "state.json").read_text())["epoch"] == 1
    fit(small_cfg(koflickr, out, resume=True))
    assert same_weights(out / "checkpoint", reference_run[0] / "checkpoint")


def test_resume_after_kill_9(koflickr, reference_run, tmp_path):
    """Kill the real CLI mid-run with SIGKILL, resume it, and end where an unbroken run ends."""
    out = tmp_path / "killed"
    args = ["train", str(koflickr), "--out", str(out), "--epochs", "3", "--patience", "10", *SMALL]
    proc = subprocess.Popen([sys.executable, "-m", "kvcap", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state = out / "checkpoint" / "state.json"
    deadline = time.time() + 240
    while not state.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()
    time.sleep(0.3)  # somewhere inside epoch 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # what a kill in the middle of saving leaves (the names the code writes to, then renames)
    stale = out / "checkpoint.tmp999999999"
    stale.mkdir(exist_ok=True)
    (stale / "model.safetensors").write_bytes(b"half")
    done = kvcap(*args, "--resume")
    assert done.returncode == 0, done.stderr
    leftovers = [p.name for p in out.iterdir() if p.name.startswith("checkpoint.") or ".tmp" in p.name]
    assert leftovers == [], leftovers
    assert same_weights(out / "checkpoint", reference_run[0] / "checkpoint")
    assert same_weights(out, reference_run[0])


def test_refuses_to_overwrite_a_model_without_resume(koflickr, reference_run):
    r = kvcap("train", str(koflickr), "--out", str(reference_run[0]), *SMALL)
    assert r.returncode == 2 and "already there" in r.stderr and "Traceback" not in r.stderr


def test_video_like_copies_are_damaged_yet_still_show_the_same_picture(koscenes):
    """A damaged copy differs from its photo, is the same for the same file and seed, and its
    features stay nearer its own photo's than another photo's (the picture is still there)."""
    from kvcap.augment import rng_for, video_like
    from kvcap.features import Encoder, load_image

    records = sorted(json.loads(koscenes.read_text(encoding="utf-8")), key=lambda r: str(r["id"]))[:6]
    photos = [Image.open(koscenes.parent / r["file_path"]) for r in records]
    copies = [video_like(p, rng_for(f"{i:012x}", 0)) for i, p in enumerate(photos)]
    again = [video_like(p, rng_for(f"{i:012x}", 0)) for i, p in enumerate(photos)]
    other_seed = [video_like(p, rng_for(f"{i:012x}", 1)) for i, p in enumerate(photos)]
    clean, damaged = np.stack([load_image(p) for p in photos]), np.stack([load_image(c) for c in copies])
    assert (damaged == np.stack([load_image(c) for c in again])).all()
    assert (damaged != np.stack([load_image(c) for c in other_seed])).any()
    assert all(np.abs(d.astype(int) - c).mean() > 3 for d, c in zip(damaged, clean))
    pooled = [Encoder().encode(x).astype(np.float32).mean(axis=1) for x in (clean, damaged)]
    a, b = (v / np.linalg.norm(v, axis=1, keepdims=True) for v in pooled)
    sim = b @ a.T  # damaged copy i against clean photo j
    assert (sim.argmax(axis=1) == np.arange(len(photos))).sum() >= 5, sim.round(2)


def test_init_continues_a_model_and_video_like_changes_what_it_learns(koflickr, reference_run, tmp_path):
    ref, _ = reference_run
    start = modelfile.load(ref)
    barely = fit(small_cfg(koflickr, tmp_path / "barely", init=str(ref), epochs=1, lr=1e-12))
    moved = modelfile.load(tmp_path / "barely")
    assert barely["epochs"] == 1 and moved.meta["init"] == ref.name
    assert moved.model.config == start.model.config and moved.vocab.tokens == start.vocab.tokens
    before, after = start.model.state_dict(), moved.model.state_dict()
    assert all(torch.allclose(before[k], after[k], atol=1e-6) for k in before)  # its weights, not fresh ones
    fit(small_cfg(koflickr, tmp_path / "clean", init=str(ref), epochs=1))
    fit(small_cfg(koflickr, tmp_path / "damaged", init=str(ref), epochs=1, video_like=1.0))
    assert not same_weights(tmp_path / "clean", ref)
    assert not same_weights(tmp_path / "clean", tmp_path / "damaged")


def test_init_refuses_a_model_trained_on_other_data(koflickr, reference_run, tmp_path):
    r = kvcap("train", str(koflickr), "--out", str(tmp_path / "m"), "--init", str(reference_run[0]),
              *[a if a != "160" else "120" for a in SMALL])
    assert r.returncode == 2 and "--init" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = kvcap("train", str(koflickr), "--out", str(tmp_path / "m2"), "--video-like", "1.5", *SMALL)
    assert r.returncode == 2 and "--video-like" in r.stderr


def test_a_model_trained_on_lite2_features_is_captioned_with_them(koflickr, reference_run, videos, tmp_path):
    """--encoder is stored in the model: its class head is that encoder's, captioning encodes
    frames with it, and a model of the other encoder is refused as a start (one line)."""
    from kvcap import Captioner
    from kvcap.features import classifier_head

    out = tmp_path / "lite2"
    fit(small_cfg(koflickr, out, encoder="efficientnet-lite2", epochs=1))
    loaded = modelfile.load(out)
    assert loaded.model.config.encoder == "efficientnet-lite2"
    w, _ = classifier_head("efficientnet-lite2")
    assert torch.allclose(loaded.model.cls_weight.float(), torch.from_numpy(w), rtol=1e-3, atol=1e-3)
    cap = Captioner.from_pretrained(out)
    assert cap.encoder.name == "efficientnet-lite2" and cap.caption_video(videos / "cockatoo.mp4").segments
    r = kvcap("train", str(koflickr), "--out", str(tmp_path / "m"), "--init", str(reference_run[0]),
              "--encoder", "efficientnet-lite2", *SMALL)
    assert r.returncode == 2 and "--encoder efficientnet-lite0" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = kvcap("train", str(koflickr), "--out", str(tmp_path / "m3"), "--encoder", "resnet", *SMALL)
    assert r.returncode == 2 and "unknown encoder 'resnet'" in r.stderr


def test_ddp_two_cpu_processes_agree_and_learn(koflickr, tmp_path):
    out = tmp_path / "ddp"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                        "29517", "-m", "kvcap", "train", str(koflickr), "--out", str(out), "--epochs", "2",
                        "--select", "loss", *SMALL], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout)  # rank 0 prints it after both ranks' weight digests matched
    assert len(result["ddp_digest"]) == 40
    rows = list(csv.DictReader(open(out / "train_log.csv")))
    assert float(rows[1]["val_loss"]) < float(rows[0]["val_loss"])


def test_cross_validation_reports_mean_and_spread(koflickr, tmp_path):
    from kvcap.train import cross_validate

    summary = cross_validate(small_cfg(koflickr, tmp_path / "cv", epochs=1, limit=90), folds=2)
    assert len(summary["folds"]) == 2
    assert set(summary["test.CIDEr-D"]) == {"mean", "std"}
    assert (tmp_path / "cv" / "fold1" / "config.json").exists() and (tmp_path / "cv" / "fold2" / "config.json").exists()


def test_evaluate_cli_scores_the_model_and_baselines(koflickr, reference_run, tmp_path):
    out, _ = reference_run
    records = sorted(json.loads(koflickr.read_text(encoding="utf-8")), key=lambda r: str(r["id"]))[:160]
    subset = tmp_path / "subset.json"
    subset.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    r = kvcap("evaluate", str(subset), "--root", str(koflickr.parent), "--model", str(out), "--baselines",
              "--json", "--examples", "3", "--quiet")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    test_ids = json.loads((out / "split.json").read_text())["datasets"]["koflickr"]["test"]
    # the subset's folder names it differently: one dataset is matched to a one-dataset model
    part = next(iter(report["datasets"].values()))
    assert part["n"] == len(test_ids) and len(report["examples"]) == 3
    baselines = part["baselines"]
    for scores in (part["scores"], baselines["nearest-neighbour"], baselines["constant"]):
        assert set(scores) >= {"BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D", "distinct", "noun_precision",
                               "noun_recall", "noun_hit"}
    assert baselines["constant"]["distinct"] == pytest.approx(1 / part["n"], abs=1e-3)
    assert 0.3 < baselines["human"]["noun_precision"] <= 1.0  # people agree on most of what they name
    table = kvcap("evaluate", str(subset), "--root", str(koflickr.parent), "--model", str(out), "--quiet")
    assert "CIDEr-D" in table.stdout and "test split" in table.stdout and "noun-P" in table.stdout
    ids = json.loads((out / "split.json").read_text())["datasets"]["koflickr"]
    for split, n in (("validation", len(ids["validation"])), ("all", 160)):
        r = kvcap("evaluate", str(subset), "--root", str(koflickr.parent), "--model", str(out), "--split", split,
                  "--json", "--quiet")
        assert r.returncode == 0, r.stderr
        assert next(iter(json.loads(r.stdout)["datasets"].values()))["n"] == n, split
    bad = kvcap("evaluate", str(tmp_path / "nope.json"), "--model", str(out), "--quiet")
    assert bad.returncode == 2 and "no such file" in bad.stderr


# ----------------------------------------------------------------------------- several datasets


@pytest.fixture(scope="module")
def two_dataset_run(koflickr, koscenes, tmp_path_factory):
    folder = tmp_path_factory.mktemp("two")
    # small: evaluation reads them whole
    manifest = both_datasets(folder, koflickr, koscenes, lambda name, records: records[:160])
    out = folder / "model"
    r = kvcap("train", str(manifest), "--out", str(out), "--epochs", "2", *SMALL)
    assert r.returncode == 0, r.stderr[-3000:]
    return manifest, out, json.loads(r.stdout)


def test_two_datasets_train_one_model_with_splits_and_scores_per_dataset(two_dataset_run):
    manifest, out, result = two_dataset_run
    config = json.loads((out / "config.json").read_text())
    # by default one style for both datasets, and the general style koscenes' first captions teach
    assert config["model"]["sources"] == ["any"] and config["model"]["general"] is True
    assert config["model"]["classes"] == 1000  # ImageNet class scores are an input
    assert [d["name"] for d in config["data"]] == ["koflickr", "koscenes"]
    assert set(config["test"]) == {"koflickr", "koscenes", "all"}
    assert config["test"]["all"]["CIDEr-D"] == pytest.approx(
        (config["test"]["koflickr"]["CIDEr-D"] + config["test"]["koscenes"]["CIDEr-D"]) / 2, abs=1e-4)
    split = json.loads((out / "split.json").read_text())["datasets"]
    records = {name: {str(r["id"]) for r in json.loads((manifest.parent / f"{name}.json").read_text(encoding="utf-8"))}
               for name in ("koflickr", "koscenes")}
    for name in ("koflickr", "koscenes"):
        val, test = set(split[name]["validation"]), set(split[name]["test"])
        assert val and test and not val & test and (val | test) <= records[name]
    rows = list(csv.DictReader(open(out / "train_log.csv")))
    assert {"val_cider_koflickr", "val_cider_koscenes", "val_noun_precision_koscenes"} <= set(rows[0])
    # calibrated on validation (a model this small may name no noun yet: then no table)
    assert config["confidence"]["fitted_on"] == f"validation, {sum(len(split[n]['validation']) for n in split)} examples"
    assert set(config["confidence"]["tables"]) <= {"auto", "general", "support"}
    assert (out / "witness.safetensors").exists() and config["confidence"]["weight"] > 0  # a noun witness, tuned


def test_evaluate_reports_every_dataset_of_a_manifest(two_dataset_run):
    manifest, out, _ = two_dataset_run
    r = kvcap("evaluate", str(manifest), "--model", str(out), "--baselines", "--json", "--quiet")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    split = json.loads((out / "split.json").read_text())["datasets"]
    for name in ("koflickr", "koscenes"):
        part = report["datasets"][name]
        assert part["n"] == len(split[name]["test"])
        assert set(part["baselines"]) == {"nearest-neighbour", "constant", "human"}
    general = kvcap("evaluate", str(manifest), "--model", str(out), "--style", "general", "--json", "--quiet")
    assert general.returncode == 0 and json.loads(general.stdout)["style"] == "general"
    bad = kvcap("evaluate", str(manifest), "--model", str(out), "--style", "poetic", "--quiet")
    assert bad.returncode == 2 and "unknown style" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("content, message", [
    ('{"datasets": []}', "expected"),
    ('{"datasets": [{"path": "a.json", "colour": "red"}]}', "dataset #1"),
    ('{"datasets": [{"path": "a.json", "format": "coco"}]}', "unknown format"),
    ('{"datasets": [{"path": "a.json"}, {"path": "b/a.json", "name": "a"}]', "not valid JSON"),
])
def test_bad_manifest_is_one_line_and_exit_2(tmp_path, content, message):
    manifest = tmp_path / "bad.manifest.json"
    manifest.write_text(content, encoding="utf-8")
    r = kvcap("train", str(manifest), "--out", str(tmp_path / "m"), "--quiet")
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "m").exists()


def test_two_datasets_with_one_name_are_refused(koflickr, tmp_path):
    r = kvcap("train", str(koflickr), str(koflickr), "--out", str(tmp_path / "m"), "--quiet")
    assert r.returncode == 2 and "named 'koflickr'" in r.stderr


def test_calibrate_refits_a_models_confidence(two_dataset_run, tmp_path):
    import shutil

    manifest, out, _ = two_dataset_run
    model = tmp_path / "model"
    shutil.copytree(out, model)
    config = json.loads((model / "config.json").read_text())
    fitted = config.pop("confidence")
    (model / "config.json").write_text(json.dumps(config), encoding="utf-8")
    r = kvcap("calibrate", str(manifest), "--model", str(model), "--quiet")
    assert r.returncode == 0, r.stderr
    again = json.loads((model / "config.json").read_text())["confidence"]
    assert again == fitted  # the same validation captions give the same calibration
    assert json.loads(r.stdout) == again  # it prints what it stored
    missing = kvcap("calibrate", str(manifest), "--model", str(tmp_path / "nope"), "--quiet")
    assert missing.returncode == 2 and "model folder not found" in missing.stderr


# ----------------------------------------------------------------------------- other layouts, patience


def _jsonl(koflickr: Path, folder: Path) -> Path:
    records = sorted(json.loads(koflickr.read_text(encoding="utf-8")), key=lambda r: str(r["id"]))[:40]
    lines = [json.dumps({"media": str(koflickr.parent / r["file_path"]), "captions": r["caption_ko"]},
                        ensure_ascii=False) for r in records]
    (folder / "mine.jsonl").write_text("\n".join(lines), encoding="utf-8")
    return folder / "mine.jsonl"


def _multimodal_frames(folder: Path) -> Path:
    """The sample label's first shot, with frames the test writes (the clips are not shared)."""
    label = json.loads(need(MULTIMODAL).read_text(encoding="utf-8"))
    shot = label["shot_infos"][0]
    rng = np.random.default_rng(0)
    (folder / shot["image_folder"]).mkdir()
    for info in shot["visual_infos"]:
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(folder / shot["image_folder"] /
                                                                             info["image_id"])
    return MULTIMODAL


@pytest.mark.parametrize("fmt", ["jsonl", "aihub-multimodal"])
def test_train_cli_reads_jsonl_and_aihub_multimodal(fmt, koflickr, tmp_path):
    data = _jsonl(koflickr, tmp_path) if fmt == "jsonl" else _multimodal_frames(tmp_path)
    out = tmp_path / "model"
    r = kvcap("train", str(data), "--format", fmt, "--root", str(tmp_path), "--out", str(out), "--epochs", "1",
              *SMALL)
    assert r.returncode == 0, r.stderr[-2000:]
    split = json.loads((out / "split.json").read_text())["datasets"]
    (name, part), = split.items()
    n = 40 if fmt == "jsonl" else 53
    assert len(part["test"]) + len(part["validation"]) < n and len(part["test"]) >= 3
    config = json.loads((out / "config.json").read_text())
    assert config["data"][0]["format"] == fmt and config["epoch"] == 1
    assert modelfile.load(out).vocab  # a model that loads


def test_patience_stops_training_after_that_many_epochs_without_a_better_score(koflickr, tmp_path):
    out = tmp_path / "patient"
    r = kvcap("train", str(koflickr), "--out", str(out), "--epochs", "8", "--patience", "1", "--select", "loss",
              "--lr", "0.2", *SMALL)
    assert r.returncode == 0, r.stderr[-2000:]
    losses = [float(row["val_loss"]) for row in csv.DictReader(open(out / "train_log.csv"))]
    best = [min(losses[: i + 1]) for i in range(len(losses))]
    improved = [i == 0 or losses[i] < best[i - 1] for i in range(len(losses))]
    # with patience 1: every epoch but the last improved, and the last did not, or was the 8th
    assert all(improved[:-1]) and (not improved[-1] or len(losses) == 8)
    assert len(losses) < 8, losses  # at this lr validation turns worse by epoch 7 (seeded: the same run every time)
    assert json.loads((out / "config.json").read_text())["epoch"] == losses.index(min(losses)) + 1


def test_style_modes_choose_what_each_caption_teaches():
    """--styles general: every caption the shared style (0) but a first koscenes caption
    (general, 1); dataset: each dataset its own (0, 1) and general last (2); none: no styles."""
    from kvcap import data as datasets
    from kvcap.korean import Vocab
    from kvcap.train import Prepared, style_names

    examples = [datasets.Example("a", [], ["x", "y"]), datasets.Example("b", [], ["x", "y"])]
    examples[0].source, examples[1].source = "koflickr", "koscenes"
    examples[1].general_first = True
    cfg = TrainConfig(data="x")
    for mode, names, styles in (("general", ["any"], [[0, 0], [1, 0]]),
                                ("dataset", ["koflickr", "koscenes"], [[0, 0], [2, 1]]),
                                ("none", [], None)):
        cfg.styles = mode
        got = style_names(cfg, ["koflickr", "koscenes"], True)
        assert got == names, mode
        prep = Prepared(Vocab([]), [], [], [], [], examples, sources=["koflickr", "koscenes"], general=True,
                        style_names=got)
        if styles is not None:
            assert [[prep.style_of(i, j) for j in range(2)] for i in range(2)] == styles, mode
