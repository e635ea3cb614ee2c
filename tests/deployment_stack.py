"""The recommended deployment on this machine: PostgreSQL, several daphne processes and nginx from deploy/nginx.conf.

Each piece runs from its own temporary directory on free loopback ports and stops with
``stop()`` (or ``kill()``), whatever state it is in. PostgreSQL refuses to run as root,
so under root it runs as the ``postgres`` user (``nobody`` if there is none).
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent
SITE_FILE = ROOT / "deploy" / "nginx.conf"
DATABASE = "kasocki"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Any, timeout: float, what: str, process: subprocess.Popen[bytes] | None = None) -> None:
    """Poll ``condition`` until true; fail after ``timeout`` s or when ``process`` ended."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError, psycopg.OperationalError):
            if condition():
                return
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.1)


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def end_process(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


class PostgreSQL:
    """A throwaway cluster in a fresh data directory; every statement and connection goes to its log."""

    def __init__(self, bin_dir: Path, log_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="kasocki-pg-"))
        self.log_path = log_dir / "postgres.log"
        self.url = f"postgres://kasocki@127.0.0.1:{self.port}/{DATABASE}"
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._as: dict[str, Any] = {}
        if os.geteuid() == 0:
            try:
                account = pwd.getpwnam("postgres")
            except KeyError:
                account = pwd.getpwnam("nobody")
            os.chown(self.dir, account.pw_uid, account.pw_gid)
            self._as = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}

    def start(self) -> PostgreSQL:
        data = self.dir / "data"
        subprocess.run(
            [self.bin_dir / "initdb", "-D", data, "-U", "kasocki", "-A", "trust", "-E", "UTF8", "--no-sync"],
            check=True,
            capture_output=True,
            cwd=self.dir,
            **self._as,
        )
        self._log = self.log_path.open("ab")
        settings = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.dir),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "log_statement": "all",  # the whitelist queries are counted in the log
            "log_connections": "on",
            "log_line_prefix": "%m [%p] ",
        }
        options = [part for name, value in settings.items() for part in ("-c", f"{name}={value}")]
        self.process = subprocess.Popen(
            [self.bin_dir / "postgres", "-D", data, "-p", str(self.port), *options],
            cwd=self.dir,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            **self._as,
        )
        wait_for(lambda: self.connect("postgres").close() is None, 30, "PostgreSQL to accept connections", self.process)
        with self.connect("postgres") as connection:
            connection.execute(f"CREATE DATABASE {DATABASE}")
        return self

    def connect(self, database: str = DATABASE) -> psycopg.Connection[Any]:
        return psycopg.connect(host="127.0.0.1", port=self.port, user="kasocki", dbname=database, autocommit=True)

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with self.connect() as connection:
            return connection.execute(sql, params).fetchall()

    def log_size(self) -> int:
        return self.log_path.stat().st_size

    def log_since(self, offset: int) -> str:
        with self.log_path.open("rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")

    def stop(self) -> None:
        if self.process is not None:
            end_process(self.process, signal.SIGINT)  # PostgreSQL's fast shutdown
        if self._log is not None:
            self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class Backend:
    """``daphne -b 127.0.0.1 -p <port> kasocki_project.asgi:application`` from the venv."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"{name}.log"
        daphne = Path(sys.executable).with_name("daphne")
        command = [str(daphne), "-b", "127.0.0.1", "-p", str(self.port), "kasocki_project.asgi:application"]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        self.process_id = f"{socket.gethostname()}:{self.process.pid}"  # how registry.py names its rows

    def wait_healthy(self, timeout: float = 60) -> None:
        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=5) as response:
                    return bool(response.status == 200)
            except urllib.error.HTTPError:
                return False

        try:
            wait_for(healthy, timeout, f"{self.name} to answer /healthz", self.process)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}\n{tail(self.log_path)}") from None

    def kill(self) -> None:
        """SIGKILL: no cleanup at all, as when the machine or the process dies."""
        self.process.kill()
        self.process.wait(10)

    def stop(self) -> None:
        end_process(self.process)


def render_site(replacements: dict[str, str]) -> str:
    """deploy/nginx.conf with only ``replacements`` applied; every one must match."""
    text = SITE_FILE.read_text()
    for old, new in replacements.items():
        assert old in text, f"deploy/nginx.conf no longer contains {old!r}"
        text = text.replace(old, new)
    return text


class Nginx:
    """nginx with its own prefix, pid, logs and temp paths, serving the site file in its http context."""

    def __init__(self, site: str, nginx_bin: Path, log_dir: Path) -> None:
        self.bin = nginx_bin
        self.dir = Path(tempfile.mkdtemp(prefix="kasocki-nginx-"))
        self.error_log = log_dir / "nginx-error.log"
        (self.dir / "kasocki.conf").write_text(site)
        temp_paths = "\n".join(
            f"    {kind}_temp_path {self.dir / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        mime_types = self._conf_dir() / "mime.types"
        # The main configuration is what a distribution ships; only the site file is under test.
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name};\n" if os.geteuid() == 0 else ""
        (self.dir / "nginx.conf").write_text(
            f"{user}daemon off;\nworker_processes 1;\npid {self.dir / 'nginx.pid'};\n"
            f"error_log {self.error_log} warn;\n"
            "events {\n    worker_connections 4096;\n}\n"
            "http {\n"
            + (f"    include {mime_types};\n" if mime_types.is_file() else "")
            + f"    access_log {self.dir / 'access.log'};\n{temp_paths}\n"
            f"    include {self.dir / 'kasocki.conf'};\n}}\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    def _conf_dir(self) -> Path:
        version = subprocess.run([self.bin, "-V"], capture_output=True, text=True, check=False).stderr
        for part in version.split():
            if part.startswith("--conf-path="):
                return Path(part.removeprefix("--conf-path=")).parent
        return self.dir

    def command(self, *extra: str) -> list[str]:
        return [
            str(self.bin),
            "-p",
            str(self.dir),
            "-c",
            str(self.dir / "nginx.conf"),
            "-e",
            str(self.error_log),
            *extra,
        ]

    def start(self, port: int) -> Nginx:
        checked = subprocess.run(self.command("-t"), capture_output=True, text=True, check=False)
        assert checked.returncode == 0, f"nginx -t refused the configuration:\n{checked.stderr}"
        # A session of its own, and none of the run's output: a worker that outlived its master
        # would otherwise hold the output of the whole test run open, and the run never end.
        self.process = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for(lambda: socket.create_connection(("127.0.0.1", port), 1).close() is None, 15, "nginx", self.process)
        return self

    def stop(self) -> None:
        if self.process is not None:
            end_process(self.process)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)  # any worker its master left behind
        shutil.rmtree(self.dir, ignore_errors=True)


def self_signed_certificate(directory: Path, host: str) -> tuple[Path, Path]:
    """A throwaway certificate for ``host`` (an IP address): (certificate, key) paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "kasocki.crt", directory / "kasocki.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def backend_env(database_url: str, bootstrap: str, static_root: Path, **settings: str) -> dict[str, str]:
    """The environment of every server process: the production settings of docs/deployment.md."""
    inherited = {
        k: v for k, v in os.environ.items() if not k.startswith(("KASOCKI_", "DJANGO_", "DATABASE_", "KAFKA_"))
    }
    return {
        **inherited,
        "DJANGO_SETTINGS_MODULE": "kasocki_project.settings",
        "DJANGO_DEBUG": "0",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
        "DJANGO_SECURE_PROXY_SSL_HEADER": "1",
        "DJANGO_SERVE_STATIC": "0",
        "DJANGO_STATIC_ROOT": str(static_root),
        "DATABASE_URL": database_url,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KASOCKI_TRUSTED_PROXIES": "127.0.0.1",
        "KASOCKI_LOG_LEVEL": "WARNING",
        **settings,
    }


def manage(env: dict[str, str], *args: str) -> str:
    """Run ``manage.py`` with ``env``; its output."""
    done = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, f"manage.py {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout
