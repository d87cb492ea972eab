"""A loopback mirror of the public sources the builtin datasets fetch, in their own formats: COCO val2017
(annotations zip + images), the Hugging Face dataset viewer's /rows pages (DocVQA rows whose images are
URLs), and the public clips (MP4). Tests point a plan's `dataset.url` at it - never the internet."""

from __future__ import annotations

import io
import json
import threading
import urllib.parse
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from PIL import Image


class Server:
    """Static files under `root`, plus /rows answered like datasets-server.huggingface.co/rows."""

    def __init__(self, root: Path):
        self.root = root
        self.hits: dict[str, int] = {}
        self.fail_first: set[str] = set()
        self.rows: list[dict] = []  # the DocVQA split served by /rows
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *a, **kw):
                super().__init__(*a, directory=str(root), **kw)

            def do_GET(self):
                server.hits[self.path] = server.hits.get(self.path, 0) + 1
                if self.path in server.fail_first and server.hits[self.path] == 1:
                    self.send_error(503, "try again")
                    return
                url = urllib.parse.urlparse(self.path)
                if url.path == "/rows":
                    self._rows(urllib.parse.parse_qs(url.query))
                    return
                super().do_GET()

            def _rows(self, q):
                if q.get("dataset") != ["lmms-lab/DocVQA"] or q.get("split") != ["validation"]:
                    self.send_error(404, "no such dataset split")
                    return
                offset, length = int(q["offset"][0]), min(100, int(q["length"][0]))
                page = [{"row_idx": i, "row": server.rows[i], "truncated_cells": []}
                        for i in range(offset, min(offset + length, len(server.rows)))]
                body = json.dumps({"features": [{"feature_idx": 0, "name": "image", "type": {"_type": "Image"}}],
                                   "rows": page, "num_rows_total": len(server.rows), "num_rows_per_page": 100,
                                   "partial": False}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def fake_coco(root: Path, n_images: int = 12) -> None:
    images, anns = [], []
    for i in range(n_images):
        name = f"{i:012d}.jpg"
        path = root / "val2017" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 48), (i * 20, 0, 0)).save(path, format="JPEG")
        images.append({"id": 1000 + i, "file_name": name, "width": 64, "height": 48})
        anns += [{"id": 10 * i + k, "image_id": 1000 + i, "caption": f" caption {k} of image {i} "} for k in range(5)]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("annotations/captions_val2017.json", json.dumps({"images": images, "annotations": anns}))
    (root / "annotations").mkdir(exist_ok=True)
    (root / "annotations" / "annotations_trainval2017.zip").write_bytes(buf.getvalue())


def fake_docvqa(server: Server, n_rows: int = 30) -> None:
    """DocVQA-like rows (lmms-lab/DocVQA's columns) whose pages are PNGs on this server."""
    for i in range(n_rows):
        path = server.root / "cached-assets" / "docvqa" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (48, 64), (255, 255 - i, 255)).save(path, format="PNG")
        server.rows.append({"questionId": 50000 + i, "question": f"What is the total on page {i}?",
                            "question_types": ["form"], "image": {"src": f"{server.url}cached-assets/docvqa/{i}.png"
                                                                  "?Expires=1&Signature=x", "height": 64, "width": 48},
                            "docId": i, "answers": [str(100 + i)], "data_split": "val"})


def mp4(path: Path, frames: int = 60, fps: int = 12, size: tuple[int, int] = (96, 64)) -> None:
    import av  # in the worker extra, so CI has it: a missing PyAV must fail here, not skip
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=fps)
        s.width, s.height, s.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(frames):
            img = np.zeros((size[1], size[0], 3), dtype=np.uint8)
            img[:, (i * 3) % size[0]:] = (200, 40, 40)
            for packet in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)


def fake_clips(root: Path) -> None:
    from runner.worker.datasets import PUBLIC_CLIPS

    for _, url in PUBLIC_CLIPS:
        mp4(root / "clips" / Path(urllib.parse.urlparse(url).path).name, frames=24)


def mirror(root: Path) -> Server:
    """Every public source, served from `root`."""
    root.mkdir(parents=True, exist_ok=True)
    server = Server(root)
    fake_coco(root)
    fake_docvqa(server)
    fake_clips(root)
    return server
