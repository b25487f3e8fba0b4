#!/usr/bin/env python3
"""Regenerates scripts/hot-functions.txt: the functions a running sidecar executes, which
scripts/link.sh places side by side in the static build, those of the steady state first (the
agent unmaps its code once start-up is over: src/process_memory.rs).

It builds the static release with symbols (target/hot), runs it under valgrind's callgrind
as a pod would (start, an OAuth2 source over HTTPS and one over HTTP, file sinks, refreshes,
the kubelet's /healthz and /readyz probes, Prometheus scrapes, SIGTERM, then a restart that
reuses the tokens on disk) against issuers on 127.0.0.1, and writes every function callgrind
saw.

Needs valgrind and openssl. Run it after a change that moves much code (a new dependency, a
new major version); `cargo bench --bench scale` (footprint) shows whether it is due.
"""

import http.server
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = "x86_64-unknown-linux-musl"
LIFETIME = 6  # seconds: refreshed at 80 %, so a few refreshes fit in the run
LEGACY_HASH = re.compile(r"17h[0-9a-f]{16}E$")
V0_CRATE_ID = re.compile(r"Cs[0-9A-Za-z]+_")
LLVM_SUFFIX = re.compile(r"\.[0-9]+$")
# Run at every start but not named by callgrind: the C start-up (its "(below main)") and a
# compiler-builtins conversion it attributes to its caller.
UNNAMED = ["_start", "_start_c", "__libc_start_main", "libc_start_main_stage2", "__floatuntidf"]


def key(symbol: str) -> str:
    """A symbol without what changes when a dependency or the compiler does: the numeric
    suffix LLVM gives internalized copies, the hash of a legacy-mangled name, the crate
    disambiguators of a v0 one (scripts/link.sh does the same)."""
    symbol = LLVM_SUFFIX.sub("", symbol)
    if symbol.startswith("_R"):
        return V0_CRATE_ID.sub("Cs_", symbol)
    return LEGACY_HASH.sub("E", symbol)


class Issuer(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    served: dict[str, int] = {}

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        Issuer.served[self.path] = Issuer.served.get(self.path, 0) + 1
        body = json.dumps(
            {
                "access_token": f"hot-functions-{sum(Issuer.served.values())}",
                "token_type": "Bearer",
                "expires_in": LIFETIME,
            }
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def serve(tls: ssl.SSLContext | None) -> int:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Issuer)
    if tls:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server.server_address[1]


def probe(port: int, path: str) -> bool:
    """GET `path` on the agent's server, as the kubelet or Prometheus does; true on 200."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            r.read()
            return r.status == 200
    except OSError:
        return False


def executed(callgrind_out: Path) -> list[str]:
    """The functions a callgrind output names, first seen first."""
    names = []
    for line in callgrind_out.read_text(errors="replace").splitlines():
        if line.startswith(("fn=", "cfn=")):
            # `name'2` is a recursion level; `0x…` an address without a symbol.
            name = re.sub(r"'\d+$", "", line.split("=", 1)[1].strip())
            if name and not name.startswith("0x"):
                names.append(name)
    return names


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build() -> Path:
    """The static release build, with symbols (its own target directory: the shipped build's
    stays as it is)."""
    target_dir = ROOT / "target" / "hot"
    subprocess.run(
        ["cargo", "build", "--release", "--target", TARGET, "--target-dir", target_dir],
        cwd=ROOT,
        env=dict(os.environ, CARGO_PROFILE_RELEASE_STRIP="false"),
        check=True,
    )
    return target_dir / TARGET / "release" / "token-agent"


def main() -> None:
    # `--binary PATH` traces an existing unstripped build instead.
    binary = Path(sys.argv[2]) if sys.argv[1:2] == ["--binary"] else build()

    with tempfile.TemporaryDirectory(prefix="hot-functions-") as tmp:
        work = Path(tmp)

        def openssl(*args):
            subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)

        # A private CA and a serving certificate for 127.0.0.1, as a cluster-internal issuer.
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
        openssl("req", "-x509", *ec, "-days", "1", "-subj", "/CN=hot-functions CA",
                "-keyout", work / "ca.key", "-out", work / "ca.pem")
        openssl("req", "-new", *ec, "-subj", "/CN=127.0.0.1", "-keyout", work / "key.pem",
                "-out", work / "leaf.csr")
        (work / "leaf.ext").write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
        openssl("x509", "-req", "-in", work / "leaf.csr", "-CA", work / "ca.pem", "-CAkey",
                work / "ca.key", "-CAcreateserial", "-days", "1", "-extfile", work / "leaf.ext",
                "-out", work / "cert.pem")
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(work / "cert.pem", work / "key.pem")
        https, plain = serve(tls), serve(None)
        (work / "secret").write_text("hot-functions-secret")
        tokens = work / "tokens"
        tokens.mkdir()
        port = free_port()
        (work / "config.yaml").write_text(
            f"""defaults:
  file: {{ dir: '{tokens}', mode: '0640' }}
  refresh: {{ at: 80% }}
  retry: {{ initial: 1s, max: 30s }}
server: {{ listen: '127.0.0.1:{port}' }}
sources:
  - name: over-https
    kind: oauth2
    token_url: https://127.0.0.1:{https}/https
    client_id: agent
    client_secret: {{ file: '{work / 'secret'}' }}
    scope: read
    http: {{ ca_file: '{work / 'ca.pem'}' }}
    sinks: [ {{ file: {{ path: https.token }} }} ]
  - name: over-http
    kind: oauth2
    token_url: http://127.0.0.1:{plain}/http
    auth: none
    sinks: [ {{ file: {{ path: http.token, format: json }} }} ]
"""
        )
        # Two runs: a fresh start, then a restart that finds the tokens the first one wrote
        # (a container restart in a pod). In the first, callgrind's counts are dumped once
        # the agent is ready: what runs after that is the steady state, placed first.
        steady: list[str] = []
        start_up: list[str] = list(UNNAMED)
        for run, config in (("fresh", work / "config.yaml"), ("restart", Path("config.yaml"))):
            out = work / f"callgrind.{run}"
            before = dict(Issuer.served)
            agent = subprocess.Popen(
                ["valgrind", "--tool=callgrind", "--demangle=no", "--dump-instr=no",
                 "--compress-strings=no", "--compress-pos=no", f"--callgrind-out-file={out}",
                 binary, "run", "--config", config],
                cwd=work,
            )
            deadline = time.time() + 120
            ready = run != "fresh"
            # Three more tokens from each source: a first fetch (or adoption) and refreshes.
            while min(Issuer.served.get(p, 0) - before.get(p, 0) for p in ("/https", "/http")) < 3:
                if time.time() > deadline or agent.poll() is not None:
                    sys.exit(f"the agent did not refresh (issuer served {Issuer.served})")
                if not ready and probe(port, "/readyz"):
                    subprocess.run(["callgrind_control", "--dump", str(agent.pid)], check=True,
                                   capture_output=True)
                    ready = True
                for path in ("/healthz", "/readyz", "/metrics"):
                    probe(port, path)
                time.sleep(0.5)
            agent.send_signal(signal.SIGTERM)
            if agent.wait(timeout=60) != 0:
                sys.exit("the agent did not stop cleanly")
            if run == "fresh":
                start_up += executed(out.with_name(out.name + ".1"))
                steady += executed(out)
            else:
                start_up += executed(out)

    # A generic function has one symbol per instantiation, all with the same key: the size
    # tells the executed ones apart.
    sizes: dict[str, int] = {}
    symbols = subprocess.run(["nm", "-S", "--defined-only", binary], check=True,
                             capture_output=True, text=True).stdout
    for line in symbols.splitlines():
        fields = line.split()
        if len(fields) == 4 and fields[2] in "tTwW":
            sizes[fields[3]] = int(fields[1], 16)
    names: list[str] = []
    seen: set[str] = set()
    for name in steady + start_up:
        entry = f"{key(name)} {sizes.get(name, 0)}"
        if entry not in seen:
            seen.add(entry)
            names.append(entry)

    listing = ROOT / "scripts" / "hot-functions.txt"
    listing.write_text(
        "# Functions a running sidecar executes, those of the steady state first, each first run\n"
        "# first: the name as scripts/link.sh matches it (no rustc hash, no v0 crate ids) and\n"
        "# the size in bytes.\n"
        "# Made by scripts/hot-functions.py; used by scripts/link.sh.\n" + "\n".join(names) + "\n"
    )
    print(f"{len(names)} functions -> {listing.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
