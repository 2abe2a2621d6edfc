"""A static file server on 127.0.0.1 that answers byte ranges (as FFmpeg's seek asks for them),
for the tests of analyzing videos by URL. Python's own http.server answers whole files only."""
from __future__ import annotations

import functools
import http.server
import os
import re
import threading
from pathlib import Path


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    def send_head(self):
        path = self.translate_path(self.path)
        m = re.match(r"bytes=(\d+)-(\d*)$", self.headers.get("Range", ""))
        if not m or not os.path.isfile(path):
            self.remaining = None
            return super().send_head()
        size = os.path.getsize(path)
        start, end = int(m.group(1)), min(int(m.group(2) or size - 1), size - 1)
        if start >= size:
            self.send_error(416)
            return None
        fh = open(path, "rb")
        fh.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", self.guess_type(path))
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Last-Modified", self.date_time_string(int(os.stat(path).st_mtime)))
        self.end_headers()
        self.remaining = end - start + 1
        return fh

    def copyfile(self, source, outputfile):
        n = self.remaining
        if n is None:
            return super().copyfile(source, outputfile)
        while n > 0:
            block = source.read(min(1 << 16, n))
            if not block:
                break
            try:
                outputfile.write(block)
            except (BrokenPipeError, ConnectionResetError):  # a reader that seeks drops what it no longer needs
                return
            n -= len(block)

    def log_message(self, *args) -> None:
        pass


def serve(folder: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    """Serve ``folder`` on 127.0.0.1 (a port of its own) from a daemon thread: (server, base URL)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(RangeHandler, directory=str(folder)))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="http-range", daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"
