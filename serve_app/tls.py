"""HTTPS for the app itself, so that fal-client (which speaks only https) needs no proxy.

Ray Serve's proxy serves TLS when `http_options` has `ssl_certfile` / `ssl_keyfile`. For development
this module makes, on first use, a private CA and a certificate for localhost / 127.0.0.1 / ::1 signed
by it, in `$SERVE_APP_TLS_DIR` (default `~/.cache/serve_app/tls`, mode 0700), and a CA bundle that is
certifi's public roots *plus* that CA: pointing `SSL_CERT_FILE` at it lets a process trust the dev
app without losing the public CAs (the same program still reaches fal's hosted models).

    python -m serve_app.tls serve configs/dev.yaml --port 8443   # serve run, over HTTPS
    python -m serve_app.tls env --port 8443                      # the variables fal-client needs

`serve` writes a copy of the config with the ssl options and the port (`<dir>/<name>.https.yaml`)
and hands it to `serve run`. Operators bring their own certificate with `--cert` / `--key`.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
LOCAL = "127.0.0.1"  # what clients use: a literal address, so no resolver prefers ::1 where nothing listens
DIR_ENV = "SERVE_APP_TLS_DIR"
RENEW_BEFORE = datetime.timedelta(days=30)


@dataclass(frozen=True)
class DevCertificate:
    """Paths of the dev CA, the server certificate and key, and the CA bundle for clients."""

    ca: Path
    cert: Path
    key: Path
    bundle: Path


def tls_dir() -> Path:
    """Where the dev certificate lives: `$SERVE_APP_TLS_DIR`, else `~/.cache/serve_app/tls`."""
    return Path(os.environ.get(DIR_ENV) or Path.home() / ".cache" / "serve_app" / "tls").expanduser()


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _names(hosts: tuple[str, ...]) -> list[Any]:
    from cryptography import x509

    names: list[Any] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _make_ca(ca_path: Path, ca_key_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"serve-app dev CA ({os.uname().nodename})")])
    usage = x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(usage, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    _write(ca_key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()), 0o600)
    _write(ca_path, cert.public_bytes(serialization.Encoding.PEM))


def _make_server_cert(ca_path: Path, ca_key_path: Path, cert_path: Path, key_path: Path,
                      hosts: tuple[str, ...]) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca = x509.load_pem_x509_certificate(ca_path.read_bytes())
    ca_key: Any = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.SubjectAlternativeName(_names(hosts)), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    _write(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()), 0o600)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))


def _server_cert_usable(cert_path: Path, ca_path: Path, hosts: tuple[str, ...]) -> bool:
    """The certificate exists, was signed by this CA, covers `hosts` and is not about to expire."""
    from cryptography import x509

    if not cert_path.exists():
        return False
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    ca = x509.load_pem_x509_certificate(ca_path.read_bytes())
    if cert.issuer != ca.subject or cert.not_valid_after_utc - RENEW_BEFORE < datetime.datetime.now(datetime.UTC):
        return False
    try:
        cert.verify_directly_issued_by(ca)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except Exception:
        return False
    return all(name in list(san) for name in _names(hosts))


def ca_bundle(ca: Path, out: Path) -> Path:
    """Write certifi's public CA bundle followed by `ca` to `out`: trust added, nothing replaced."""
    import certifi

    public = Path(certifi.where()).read_bytes()
    _write(out, public.rstrip(b"\n") + b"\n\n# serve-app dev CA\n" + ca.read_bytes())
    return out


def ensure_dev_certificate(directory: Path | None = None, hosts: tuple[str, ...] = DEFAULT_HOSTS) -> DevCertificate:
    """The dev CA, server certificate and client bundle in `directory`, made (or renewed, or extended
    to new host names) when needed; the CA is made once and kept."""
    directory = directory or tls_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    hosts = tuple(dict.fromkeys((*DEFAULT_HOSTS, *hosts)))
    paths = DevCertificate(directory / "ca.pem", directory / "server.pem", directory / "server.key",
                           directory / "ca-bundle.pem")
    ca_key = directory / "ca.key"
    if not (paths.ca.exists() and ca_key.exists()):
        _make_ca(paths.ca, ca_key)
        paths.cert.unlink(missing_ok=True)
    if not _server_cert_usable(paths.cert, paths.ca, hosts):
        _make_server_cert(paths.ca, ca_key, paths.cert, paths.key, hosts)
    ca_bundle(paths.ca, paths.bundle)
    return paths


def https_config(config: dict[str, Any], cert: Path, key: Path, port: int | None = None,
                 host: str | None = None) -> dict[str, Any]:
    """A copy of a Serve config file's content whose proxy serves HTTPS with `cert` / `key`."""
    out = dict(config)
    http = dict(out.get("http_options") or {})
    http.update(ssl_certfile=str(cert.resolve()), ssl_keyfile=str(key.resolve()))
    if port is not None:
        http["port"] = port
    if host is not None:
        http["host"] = host
    out["http_options"] = http
    return out


def client_env(host: str, port: int, bundle: Path, route_prefix: str = "/", queue_prefix: str = "/queue",
               ) -> dict[str, str]:
    """The environment fal-client needs to call the app at `https://host:port<route_prefix>`."""
    root = f"{host}:{port}{route_prefix.rstrip('/')}"
    return {"FAL_RUN_HOST": root, "FAL_QUEUE_RUN_HOST": f"{root}{queue_prefix}", "SSL_CERT_FILE": str(bundle)}


def _app_prefixes(config: dict[str, Any]) -> tuple[str, str]:
    """`(route_prefix, queue route prefix)` of the config's first application."""
    app = (config.get("applications") or [{}])[0]
    queue = (((app.get("args") or {}).get("ingress") or {}).get("queue") or {})
    return app.get("route_prefix") or "/", queue.get("route_prefix") or "/queue"


def _print_env(env: dict[str, str], out: Any) -> None:
    for name, value in env.items():
        print(f"export {name}={value}", file=out)
    print("export FAL_KEY=anything   # or a key the server accepts (ingress.api_key_env)", file=out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serve_app.tls", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("ensure", "make the dev certificate if needed and print its paths"),
                       ("env", "print the environment fal-client needs"),
                       ("serve", "`serve run` a config over HTTPS")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--host", action="append", default=[], help="extra host name for the certificate")
        p.add_argument("--port", type=int, default=8443, help="HTTPS port (default 8443)")
        p.add_argument("--dir", type=Path, default=None, help=f"certificate directory (default ${DIR_ENV} "
                       "or ~/.cache/serve_app/tls)")
        if name == "serve":
            p.add_argument("config", type=Path, help="Serve config file, e.g. configs/dev.yaml")
            p.add_argument("--cert", type=Path, default=None, help="your certificate (PEM) instead of the dev one")
            p.add_argument("--key", type=Path, default=None, help="its private key (PEM)")
    args, rest = parser.parse_known_args(argv)
    if rest and args.command != "serve":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "serve" and (args.cert is None) != (args.key is None):
        parser.error("--cert and --key go together")
    if args.command == "serve" and args.cert is not None:
        cert, key, bundle = args.cert, args.key, Path(os.environ.get("SSL_CERT_FILE", "<your CA bundle>"))
    else:
        dev = ensure_dev_certificate(args.dir, tuple(args.host))
        cert, key, bundle = dev.cert, dev.key, dev.bundle
        if args.command == "ensure":
            for field in ("ca", "cert", "key", "bundle"):
                print(f"{field}: {getattr(dev, field)}")
            return 0
    if args.command == "env":
        _print_env(client_env(LOCAL, args.port, bundle), sys.stdout)
        return 0
    config = yaml.safe_load(args.config.read_text())
    derived = https_config(config, cert, key, port=args.port)
    directory = args.dir or tls_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = directory / f"{args.config.stem}.https.yaml"
    _write(target, yaml.safe_dump(derived, sort_keys=False).encode())
    host = derived["http_options"].get("host") or "127.0.0.1"
    shown = LOCAL if host in ("127.0.0.1", "localhost", "0.0.0.0") else host
    print(f"Serving {args.config} on https://{shown}:{args.port} (config {target}). For fal-client, in another "
          "shell:", file=sys.stderr)
    _print_env(client_env(shown, args.port, bundle, *_app_prefixes(config)), sys.stderr)
    serve_bin = shutil.which("serve", path=os.pathsep.join([str(Path(sys.executable).parent),
                                                            os.environ.get("PATH", "")]))
    if serve_bin is None:
        print("`serve` (Ray Serve's CLI) is not installed", file=sys.stderr)
        return 1
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(serve_bin, [serve_bin, "run", str(target), *rest])
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
