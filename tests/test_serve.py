"""`pgexport serve` as an attacker meets it: the Host names it answers (DNS rebinding), what it says when it
listens beyond this machine, the bundle files it sends only while they are what the manifest lists, and the
headers every response carries. The server runs in this process on a tiny bundle and a stand-in for
runtimes/web (a page with an inline import map, empty onnxruntime-web and tokenizers files), so that nothing
here needs npm; tests/test_web.py runs the real page in Chromium."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import socket
import threading
import urllib.request
from http.client import HTTPConnection
from pathlib import Path

import pytest

from pgexport.serve import ORT_FILES, TOKENIZERS, banner, make_server
from pgexport.serve_hosts import Binding
from pgexport_runtime.manifest import sha256_file

IMPORT_MAP = '{ "imports": { "onnxruntime-web": "/ort/ort.min.mjs" } }'
PAGE = f'<!doctype html><script type="importmap">{IMPORT_MAP}</script><script type="module" src="/page/app.js"></script>'


@pytest.fixture
def web(tmp_path) -> Path:
    root = tmp_path / "web"
    for name, text in {"page/index.html": PAGE, "page/app.js": "", "src/browser.js": "",
                       **{f"node_modules/onnxruntime-web/dist/{n}": "" for n in ORT_FILES},
                       f"node_modules/{TOKENIZERS}": ""}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.fixture
def bundle(tiny_bundle_copy) -> Path:
    return tiny_bundle_copy


@pytest.fixture
def serving(bundle, web):
    """serving(host=...) -> a started server for `bundle`, shut down after the test."""
    servers = []

    def start(host: str = "127.0.0.1", quiet: bool = True):
        srv = make_server(bundle, port=0, host=host, quiet=quiet, web=web)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def get(srv, path: str, host: str | None = "", extra: tuple = ()):
    """GET `path` with exactly this Host header (None: none; "": the server's own 127.0.0.1:PORT)."""
    port = srv.server_address[1]
    conn = HTTPConnection("127.0.0.1", port, timeout=30)
    conn.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
    if host is not None:
        conn.putheader("Host", host or f"127.0.0.1:{port}")
    for value in extra:
        conn.putheader("Host", value)
    conn.endheaders()
    r = conn.getresponse()
    try:
        return r.status, r.headers, r.read()
    finally:
        conn.close()


def list_file(bundle: Path, name: str, data: bytes) -> None:
    """Adds `name` to the bundle and its manifest, with its true sha256."""
    (bundle / name).write_bytes(data)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"][name] = sha256_file(bundle / name)
    (bundle / "manifest.json").write_text(json.dumps(manifest))


# ------------------------------------------------------------------------------------ Host (DNS rebinding)

@pytest.mark.parametrize("host", ["localhost:{port}", "127.0.0.1:{port}", "[::1]:{port}", "LocalHost:{port}"])
def test_loopback_names_with_the_port_are_answered(serving, host):
    srv = serving()
    status, _, body = get(srv, "/bundle/manifest.json", host.format(port=srv.server_address[1]))
    assert status == 200 and json.loads(body)["schema"] == "pgexport.bundle"


@pytest.mark.parametrize("host, status", [
    ("attacker.example", 421),  # the rebinding page's own name, as a browser sends it on port 80
    ("attacker.example:{port}", 421),
    ("localhost.attacker.example:{port}", 421),
    ("127.0.0.1.nip.io:{port}", 421),  # a name that resolves to 127.0.0.1 is still a name
    ("127.0.0.1:{port}@attacker.example", 421),
    ("localhost:{other}", 421),  # the right name on another port
    ("localhost", 421),  # no port: port 80, not this server's
    ("[::1]", 421),
    ("", 421),  # an empty Host
    (None, 400),  # no Host at all
])
def test_other_host_names_are_refused(serving, host, status):
    srv = serving()
    port = srv.server_address[1]
    value = host if host is None else (host.format(port=port, other=port + 1) or " ")
    got, headers, body = get(srv, "/bundle/manifest.json", value)
    assert got == status
    assert b"pgexport.bundle" not in body
    assert "default-src 'none'" in headers["Content-Security-Policy"]


def test_two_host_headers_are_refused(serving):
    srv = serving()
    port = srv.server_address[1]
    status, _, body = get(srv, "/", f"localhost:{port}", extra=("attacker.example",))
    assert status == 400 and b"importmap" not in body


def test_the_page_is_refused_to_a_foreign_host_too(serving):
    status, _, body = get(serving(), "/", "attacker.example")
    assert status == 421 and b"importmap" not in body


def test_a_server_on_every_interface_answers_addresses_not_names(serving):
    srv = serving(host="")
    port = srv.server_address[1]
    for host in (f"localhost:{port}", f"10.1.2.3:{port}", f"{socket.gethostname()}:{port}"):
        assert get(srv, "/bundle/manifest.json", host)[0] == 200, host
    for host in (f"attacker.example:{port}", f"10.1.2.3:{port + 1}"):
        assert get(srv, "/bundle/manifest.json", host)[0] == 421, host


def test_the_names_a_binding_answers():
    loopback6 = Binding("::1", "::1", 8000)
    assert loopback6.accepts("[::1]:8000") and loopback6.accepts("localhost:8000")
    assert not loopback6.accepts("[::2]:8000") and not loopback6.accepts("::1")
    named = Binding("pg.lan", "192.168.1.5", 8000)  # a given name and address: those two only
    assert named.accepts("pg.lan:8000") and named.accepts("192.168.1.5:8000")
    assert not named.accepts("localhost:8000") and not named.accepts("192.168.1.6:8000")
    assert not named.accepts("evil.lan:8000")
    assert Binding("127.0.0.1", "127.0.0.1", 80).accepts("localhost")  # port 80: browsers leave it out


# ------------------------------------------------------------------------------------ beyond loopback

def test_every_interface_warns_and_prints_a_url_that_works(serving, bundle):
    srv = serving(host="")
    lines = banner(srv, bundle)
    assert len(lines) == 2 and lines[0].startswith("warning: listening on every network interface")
    url = f"http://127.0.0.1:{srv.server_address[1]}/"
    assert lines[1].startswith("serving ") and url in lines[1] and "http://:" not in lines[1]
    with urllib.request.urlopen(url + "bundle/manifest.json", timeout=30) as r:
        assert r.status == 200


def test_loopback_says_one_line_and_no_warning(serving, bundle):
    srv = serving(host="localhost")
    assert banner(srv, bundle) == [f"serving {bundle} on http://localhost:{srv.server_address[1]}/ (Ctrl-C to stop)"]


@pytest.mark.parametrize("host, address, url, warns", [
    ("0.0.0.0", "0.0.0.0", "http://127.0.0.1:8000/", "every network interface"),
    ("::", "::", "http://[::1]:8000/", "every network interface"),
    ("192.168.1.5", "192.168.1.5", "http://192.168.1.5:8000/", "192.168.1.5, an address other machines can reach"),
    ("fd00::5", "fd00::5", "http://[fd00::5]:8000/", "[fd00::5], an address other machines can reach"),
    ("::1", "::1", "http://[::1]:8000/", None),
    ("127.0.0.2", "127.0.0.2", "http://127.0.0.2:8000/", None),
])
def test_what_a_binding_says(host, address, url, warns):
    b = Binding(host, address, 8000)
    assert b.url() == url
    assert (b.warning() is None) if warns is None else (warns in b.warning() and "\n" not in b.warning())


# ------------------------------------------------------------------------------------ bundle files

def test_a_listed_file_replaced_by_a_hard_link_outside_the_bundle_is_refused(serving, bundle, tmp_path):
    srv = serving()
    assert get(srv, "/bundle/projector.onnx")[0] == 200  # served once: its sha256 is remembered
    outside = tmp_path / "outside.onnx"
    shutil.copyfile(bundle / "projector.onnx", outside)  # the same bytes: only the link gives it away
    (bundle / "projector.onnx").unlink()
    os.link(outside, bundle / "projector.onnx")
    status, headers, body = get(srv, "/bundle/projector.onnx")
    assert status == 403 and body != outside.read_bytes()
    assert "default-src 'none'" in headers["Content-Security-Policy"]


def test_a_hard_link_to_a_secret_is_refused_before_any_request(serving, bundle, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("not part of the bundle")
    (bundle / "tokenizer.json").unlink()
    os.link(secret, bundle / "tokenizer.json")
    status, _, body = get(serving(), "/bundle/tokenizer.json")
    assert status == 403 and b"not part of the bundle" not in body


def test_a_file_of_another_size_is_refused(serving, bundle):
    srv = serving()
    assert get(srv, "/bundle/tokenizer.json")[0] == 200
    with open(bundle / "tokenizer.json", "ab") as f:
        f.write(b" ")
    assert get(srv, "/bundle/tokenizer.json")[0] == 403


def test_a_file_changed_in_place_at_the_same_size_and_time_is_refused(serving, bundle):
    srv = serving()
    path = bundle / "decoder.onnx"
    status, _, first = get(srv, "/bundle/decoder.onnx")
    assert status == 200 and first == path.read_bytes()
    st = path.stat()
    with open(path, "r+b") as f:  # one byte flipped where the weights are, the modification time put back
        f.seek(st.st_size // 2)
        byte = f.read(1)
        f.seek(st.st_size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    assert get(srv, "/bundle/decoder.onnx")[0] == 403


def test_a_manifest_rewritten_after_start_is_refused(serving, bundle):
    srv = serving()
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["stray.txt"] = "0" * 64
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    (bundle / "stray.txt").write_text("not listed when the server started")
    assert get(srv, "/bundle/manifest.json")[0] == 403
    assert get(srv, "/bundle/stray.txt")[0] == 404


@pytest.mark.parametrize("path", ["/bundle/stray.txt", "/bundle/recipe.json", "/bundle/", "/bundle/../manifest.json",
                                  "/bundle/%2e%2e/bundle/manifest.json", "/manifest.json"])
def test_files_the_manifest_does_not_list_are_not_served(serving, bundle, path):
    (bundle / "stray.txt").write_text("not listed")
    (bundle / "recipe.json").write_text("{}")
    assert get(serving(), path)[0] == 404


def test_a_listed_html_file_is_bytes_in_a_sandbox(serving, bundle):
    list_file(bundle, "evil.html", b"<script>fetch('/bundle/manifest.json').then(r => r.text()).then(alert)</script>")
    status, headers, body = get(serving(), "/bundle/evil.html")
    assert status == 200 and body.startswith(b"<script>")  # listed, and its sha256 matches: it is sent ...
    assert headers["Content-Type"] == "application/octet-stream"  # ... never as a document
    assert headers["X-Content-Type-Options"] == "nosniff"
    csp = headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "sandbox" in csp


# ------------------------------------------------------------------------------------ every response's headers

def test_the_page_may_run_its_own_scripts_and_its_import_map_only(serving):
    status, headers, body = get(serving(), "/")
    assert status == 200 and b"importmap" in body
    csp = headers["Content-Security-Policy"]
    digest = base64.b64encode(hashlib.sha256(IMPORT_MAP.encode()).digest()).decode()
    assert f"script-src 'self' 'wasm-unsafe-eval' 'sha256-{digest}';" in csp
    assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp
    assert "object-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Cross-Origin-Embedder-Policy"] == "require-corp"


@pytest.mark.parametrize("path, host, status", [("/nowhere", "", 404), ("/bundle/manifest.json", "evil.example", 421),
                                                ("/bundle/manifest.json", "", 200), ("/src/browser.js", "", 200)])
def test_every_response_carries_a_policy_and_nosniff(serving, path, host, status):
    got, headers, body = get(serving(), path, host)
    assert got == status
    assert headers["Content-Security-Policy"] and headers["X-Content-Type-Options"] == "nosniff"
    if status != 200:
        assert headers["Content-Type"].startswith("text/plain") and b"<" not in body


def test_the_log_shows_a_request_line_escaped(serving, capsys):
    srv = serving(quiet=False)
    port = srv.server_address[1]
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(f"GET /\x1b]0;owned\x07\x1b[2J HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        while s.recv(65536):
            pass
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err
    assert "GET /\\x1b]0;owned\\x07\\x1b[2J HTTP/1.0" in err
