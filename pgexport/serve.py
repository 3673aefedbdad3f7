"""`pgexport serve BUNDLE`: the JavaScript runtime's page and a bundle, served on localhost.

What is served, and nothing else from disk:
- /                  the runtime's page (runtimes/web/page/index.html), and /page/<file> its other static files;
- /src/<file>.js     the runtime's modules (runtimes/web/src);
- /ort/<file>        onnxruntime-web's WebGPU/WASM build: the three files it loads (no source maps, no other build);
- /vendor/tokenizers.min.mjs   tokenizers.js;
- /bundle/<file>     manifest.json and the files the manifest lists.
Names are looked up in these fixed tables, never joined onto a path from the request, so there is no path to
traverse. Every response carries COOP/COEP headers: the page is cross-origin isolated, which is what
onnxruntime-web needs for WASM threads (SharedArrayBuffer). Nothing here imports torch or onnxruntime.
"""

from __future__ import annotations

import shutil
import sys
from functools import partial
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from pgexport_runtime.errors import UserError
from pgexport_runtime.manifest import MANIFEST, load_manifest

WEB = Path(__file__).resolve().parents[1] / "runtimes" / "web"
# ort.min.mjs: WASM, and WebGPU through JSEP. Not ort.webgpu.min.mjs: its WASM build (asyncify) has no CPU kernel for
# GatherBlockQuantized, the int4 embedding of quantized bundles (measured with onnxruntime-web 1.30).
ORT_FILES = ("ort.min.mjs", "ort-wasm-simd-threaded.jsep.mjs", "ort-wasm-simd-threaded.jsep.wasm")
TOKENIZERS = "@huggingface/tokenizers/dist/tokenizers.min.mjs"
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".mjs": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".wasm": "application/wasm",
         ".json": "application/json", ".png": "image/png", ".jpg": "image/jpeg", ".svg": "image/svg+xml"}
ISOLATION = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp",
             "Cross-Origin-Resource-Policy": "same-origin", "X-Content-Type-Options": "nosniff"}


def routes(bundle: Path, web: Path = WEB) -> dict[str, Path]:
    """URL path -> file, for everything the server may send. Checks the bundle's manifest (not its sha256s:
    the page verifies every file it loads) and that the JavaScript runtime and its dependencies are installed."""
    modules = web / "node_modules"
    if not (web / "src").is_dir() or not (web / "page").is_dir():
        raise UserError(f"the JavaScript runtime is not at {web} (pgexport serve runs from a source checkout)")
    missing = [f for f in (*(f"onnxruntime-web/dist/{n}" for n in ORT_FILES), TOKENIZERS) if not (modules / f).is_file()]
    if missing:
        raise UserError(f"{web}: its dependencies are not installed (no node_modules/{missing[0]}); run `npm ci` there")
    manifest = load_manifest(bundle, verify=False)
    table = {"/": web / "page" / "index.html"}
    table |= {f"/page/{p.name}": p for p in (web / "page").iterdir() if p.is_file()}
    table |= {f"/src/{p.name}": p for p in (web / "src").glob("*.js") if p.is_file()}
    table |= {f"/ort/{n}": modules / "onnxruntime-web" / "dist" / n for n in ORT_FILES}
    table["/vendor/tokenizers.min.mjs"] = modules / TOKENIZERS
    table |= {f"/bundle/{n}": manifest.path(n) for n in [MANIFEST, *manifest.files]}
    return table


class _Handler(BaseHTTPRequestHandler):
    server_version = "pgexport-serve"

    def __init__(self, *args, table: dict[str, Path], quiet: bool, **kwargs):
        self.table, self.quiet = table, quiet
        super().__init__(*args, **kwargs)

    def do_GET(self):  # noqa: N802 (http.server's name)
        self._send(body=True)

    def do_HEAD(self):  # noqa: N802
        self._send(body=False)

    def _send(self, body: bool) -> None:
        path = self.table.get(unquote(urlsplit(self.path).path))
        if path is None or not path.is_file() or path.is_symlink():
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        size = path.stat().st_size
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", TYPES.get(path.suffix, "application/octet-stream"))
        self.send_header("Content-Length", str(size))
        self.send_header("Cache-Control", "no-cache")
        for k, v in ISOLATION.items():
            self.send_header(k, v)
        self.end_headers()
        if body:
            with open(path, "rb") as f:
                try:
                    shutil.copyfileobj(f, self.wfile, 1 << 20)
                except (BrokenPipeError, ConnectionResetError):  # the page went away mid-file
                    pass

    def send_error(self, code, message=None, explain=None):
        self.error_message_format = "%(code)d %(message)s\n"  # no HTML echo of the request
        super().send_error(code, message, explain)

    def log_message(self, format, *args):  # noqa: A002
        if not self.quiet:
            sys.stderr.write(f"{self.address_string()} {format % args}\n")


def make_server(bundle: Path, port: int = 8000, host: str = "127.0.0.1", quiet: bool = False) -> ThreadingHTTPServer:
    """A server for `bundle`, bound but not yet serving (port 0: any free port; see server_address)."""
    table = routes(Path(bundle))
    try:
        return ThreadingHTTPServer((host, port), partial(_Handler, table=table, quiet=quiet))
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None


def serve(bundle: Path, port: int = 8000, host: str = "127.0.0.1") -> None:
    """Serve the runtime's page for `bundle` until interrupted."""
    server = make_server(bundle, port, host)
    print(f"serving {bundle} on http://{host}:{server.server_address[1]}/ (Ctrl-C to stop)", file=sys.stderr)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()

