"""`pgexport serve BUNDLE`: the JavaScript runtime's page and a bundle, served on localhost.

What is served, and nothing else from disk:
- /                  the runtime's page (runtimes/web/page/index.html), and /page/<file> its other static files;
- /src/<file>.js     the runtime's modules (runtimes/web/src);
- /ort/<file>        onnxruntime-web's WebGPU/WASM build: the three files it loads (no source maps, no other build);
- /vendor/tokenizers.min.mjs   tokenizers.js;
- /bundle/<file>     manifest.json and the files the manifest lists, each only while it matches its sha256 and has
                     no other hard link (serve_files.py).
Names are looked up in these fixed tables, never joined onto a path from the request, so there is no path to
traverse. Only requests whose Host header names this server are answered (serve_hosts.py: DNS rebinding).
Every response carries COOP/COEP headers: the page is cross-origin isolated, which is what onnxruntime-web needs
for WASM threads (SharedArrayBuffer). Every response also carries a Content-Security-Policy: the page may run
only its own scripts (and WebAssembly), and a bundle file is never a document that runs anything, whatever its
name (it goes out as JSON or bytes, sandboxed, with nosniff). Nothing here imports torch or onnxruntime.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import sys
from functools import partial
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from pgexport.serve_files import BundleFiles, Refused
from pgexport.serve_hosts import Binding, family
from pgexport_runtime.errors import UserError
from pgexport_runtime.terminal import printable

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
# a bundle file, an error, anything but the page's own files: nothing to run, load or show
STRICT_CSP = "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; sandbox"


def routes(web: Path = WEB) -> dict[str, Path]:
    """URL path -> file, for the page, the runtime and its dependencies (the bundle's files are BundleFiles').
    Checks that the JavaScript runtime and its dependencies are installed."""
    modules = web / "node_modules"
    if not (web / "src").is_dir() or not (web / "page").is_dir():
        raise UserError(f"the JavaScript runtime is not at {web} (pgexport serve runs from a source checkout)")
    missing = [f for f in (*(f"onnxruntime-web/dist/{n}" for n in ORT_FILES), TOKENIZERS) if not (modules / f).is_file()]
    if missing:
        raise UserError(f"{web}: its dependencies are not installed (no node_modules/{missing[0]}); run `npm ci` there")
    table = {"/": web / "page" / "index.html"}
    table |= {f"/page/{p.name}": p for p in (web / "page").iterdir() if p.is_file()}
    table |= {f"/src/{p.name}": p for p in (web / "src").glob("*.js") if p.is_file()}
    table |= {f"/ort/{n}": modules / "onnxruntime-web" / "dist" / n for n in ORT_FILES}
    table["/vendor/tokenizers.min.mjs"] = modules / TOKENIZERS
    return table


def page_csp(index: Path) -> str:
    """The page's policy: scripts from this server only, and WebAssembly (onnxruntime-web compiles its .wasm);
    its inline import map by sha256; workers (onnxruntime-web's threads), fetches and images from this server
    (and the blob: and data: URLs it makes); no plugins, no other base URL, no framing."""
    html = index.read_bytes().decode("utf-8")
    inline = re.findall(r"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", html, re.S)
    hashes = "".join(f" 'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in inline)
    return (f"default-src 'self'; script-src 'self' 'wasm-unsafe-eval'{hashes}; worker-src 'self' blob:; "
            "img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; form-action 'self'; "
            "frame-ancestors 'none'")


class _Handler(BaseHTTPRequestHandler):
    server_version = "pgexport-serve"
    error_content_type = "text/plain; charset=utf-8"
    error_message_format = "%(code)d %(message)s\n"  # no HTML echo of the request
    csp = STRICT_CSP  # every response's, until a file of the page is sent

    def __init__(self, *args, table: dict[str, Path], files: BundleFiles, csp: str, quiet: bool, **kwargs):
        self.table, self.files, self.page_csp, self.quiet = table, files, csp, quiet
        super().__init__(*args, **kwargs)

    def do_GET(self):  # noqa: N802 (http.server's name)
        self._send(body=True)

    def do_HEAD(self):  # noqa: N802
        self._send(body=False)

    def _send(self, body: bool) -> None:
        self.csp = STRICT_CSP
        hosts = self.headers.get_all("Host") or []
        if len(hosts) != 1:
            self.send_error(HTTPStatus.BAD_REQUEST, "a request needs one Host header")
        elif not self.server.binding.accepts(hosts[0]):
            self.send_error(HTTPStatus.MISDIRECTED_REQUEST, "this server does not answer that host name")
        else:
            url = unquote(urlsplit(self.path).path)
            if url.startswith("/bundle/"):
                self._send_bundle_file(url.removeprefix("/bundle/"), body)
            else:
                self._send_page_file(url, body)

    def _send_page_file(self, url: str, body: bool) -> None:
        path = self.table.get(url)
        if path is None or not path.is_file() or path.is_symlink():
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        self.csp = self.page_csp
        with open(path, "rb") as f:
            self._reply(f, os.fstat(f.fileno()).st_size, TYPES.get(path.suffix, "application/octet-stream"), body)

    def _send_bundle_file(self, name: str, body: bool) -> None:
        if name not in self.files.digests:
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        try:
            f, size = self.files.open(name)
        except Refused as exc:
            self.log_message("refused /bundle/%s: %s", name, exc)
            self.send_error(HTTPStatus.FORBIDDEN, "the file is not the one the manifest lists")
            return
        with f:  # bytes for the page to hash, never a document: no HTML, no script, whatever the name
            self._reply(f, size, "application/json" if name.endswith(".json") else "application/octet-stream", body)

    def _reply(self, f, size: int, content_type: str, body: bool) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(size))
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        if body:
            try:
                shutil.copyfileobj(f, self.wfile, 1 << 20)
            except (BrokenPipeError, ConnectionResetError):  # the page went away mid-file
                pass

    def end_headers(self):  # every response, errors included
        for k, v in {**ISOLATION, "Content-Security-Policy": self.csp}.items():
            self.send_header(k, v)
        super().end_headers()

    def log_message(self, format, *args):  # noqa: A002
        if not self.quiet:  # the request line is the client's text
            sys.stderr.write(printable(f"{self.address_string()} {format % args}") + "\n")


class Server(ThreadingHTTPServer):
    """A bound server and its Binding: the names it answers, its URL, whether it reaches beyond this machine."""

    def __init__(self, host: str, port: int, handler):
        address = host[1:-1] if host.startswith("[") and host.endswith("]") else host  # [::1] as a URL writes it
        self.address_family = family(address)
        super().__init__((address, port), handler)
        self.binding = Binding(host, self.server_address[0], self.server_address[1])


def make_server(bundle: Path, port: int = 8000, host: str = "127.0.0.1", quiet: bool = False,
                web: Path = WEB) -> Server:
    """A server for `bundle`, bound but not yet serving (port 0: any free port; see server_address)."""
    table = routes(web)
    files = BundleFiles.of(Path(bundle))
    handler = partial(_Handler, table=table, files=files, csp=page_csp(table["/"]), quiet=quiet)
    try:
        return Server(host, port, handler)
    except (OSError, UnicodeError) as exc:  # UnicodeError: a host name the IDNA codec refuses
        raise UserError(f"cannot listen on {host}:{port} ({getattr(exc, 'strerror', None) or exc})") from None


def banner(server: Server, bundle: Path) -> list[str]:
    """What `serve` says as it starts: a warning when the server is reachable from other machines, and a URL
    that reaches it from this one."""
    warning = server.binding.warning()
    return [*([warning] if warning else []), printable(f"serving {bundle} on {server.binding.url()} (Ctrl-C to stop)")]


def serve(bundle: Path, port: int = 8000, host: str = "127.0.0.1") -> None:
    """Serve the runtime's page for `bundle` until interrupted."""
    server = make_server(bundle, port, host)
    for line in banner(server, bundle):
        print(line, file=sys.stderr)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
