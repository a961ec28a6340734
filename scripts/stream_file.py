"""Play a video file as a live stream, to try `kvcap watch` on something that is not a file.

    kvcap watch rtmp://127.0.0.1:1935/live/cam --input-option listen=1 --alert 사람 &
    python scripts/stream_file.py ../shared/videos/office_people_entering.mp4 rtmp://127.0.0.1:1935/live/cam

An rtmp:// address is pushed to whoever listens there (kvcap watch with listen=1, as an
encoder such as OBS pushes to a server); an rtsp:// address is published to an RTSP server
that is already running (for example Debian's rtsp-server-perl: publish to port 5545, watch
rtsp://127.0.0.1:554/NAME); a .m3u8 path is written as a live HLS playlist (2-s segments)
for a web server to serve (`python -m http.server` in its folder, watch
http://127.0.0.1:8000/NAME.m3u8). Packets are copied (no re-encoding) at the video's own
pace; --loop plays it again and again.
"""
from __future__ import annotations

import argparse
import time

import av


def publish(video: str, url: str, loops: int) -> None:
    if url.startswith("rtmp://"):
        fmt, options = "flv", {}
    elif url.startswith("rtsp://"):
        fmt, options = "rtsp", {"rtsp_transport": "udp"}  # the simple servers take RTP over UDP from a publisher
    elif url.endswith(".m3u8") and "://" not in url:  # a live HLS playlist for a web server to serve
        fmt, options = "hls", {"hls_time": "2", "hls_list_size": "6", "hls_flags": "delete_segments"}
    else:
        raise SystemExit(f"stream_file: {url}: an rtmp:// or rtsp:// address, or a .m3u8 file")
    src = av.open(video)
    stream_in = src.streams.video[0]
    print(f"stream_file: publishing to {url}")
    with av.open(url, "w", format=fmt, options=options) as out:
        stream_out = out.add_stream_from_template(stream_in)
        t0, shift = time.monotonic(), 0
        for _ in range(loops):
            last = 0
            src.seek(0)
            for packet in src.demux(stream_in):
                if packet.pts is None:
                    continue
                at = float((packet.pts + shift) * packet.time_base)
                time.sleep(max(0.0, at - (time.monotonic() - t0)))  # the video's own pace
                packet.pts += shift
                packet.dts = None if packet.dts is None else packet.dts + shift
                last = max(last, packet.pts + (packet.duration or 0))
                packet.stream = stream_out
                out.mux(packet)
            shift = last


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("video")
    ap.add_argument("url")
    ap.add_argument("--loop", type=int, default=1, help="times to play it (default once)")
    args = ap.parse_args()
    publish(args.video, args.url, args.loop)


if __name__ == "__main__":
    main()
