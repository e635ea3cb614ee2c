"""Follow the README's "Add to an existing Django site" steps in a throwaway Channels site.

The app is installed as step 1 says, into a new virtualenv that sees nothing of this checkout:
a dependency pyproject.toml forgets, or package data the wheel leaves out, fails here. The site
has its own router, websocket consumer and auth middleware before Kasocki comes, and keeps them.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
import pytest

from scripts.kafka_topics import KafkaTopics
from tests.clients import RecordingClient
from tests.live_server import free_port
from tests.sse_client import open_stream

ROOT = Path(__file__).resolve().parent.parent
SERVERS = ("uvicorn", "daphne")
# The module's first test also builds the app and installs it into a new virtualenv.
pytestmark = pytest.mark.timeout(300)

# The site's own websocket consumer, from before Kasocki: it greets with the user AuthMiddlewareStack found.
CONSUMERS = """\
from channels.generic.websocket import AsyncWebsocketConsumer


class EchoConsumer(AsyncWebsocketConsumer):
    async def connect(self):
        await self.accept()
        await self.send(text_data=f"hello {self.scope['user']}")

    async def receive(self, text_data=None, bytes_data=None):
        if text_data == "boom":
            raise RuntimeError("the site's own error")
        await self.send(text_data=text_data)
"""
ROUTING = """\
from django.urls import path

from mysite.consumers import EchoConsumer

websocket_urlpatterns = [path("ws/echo/", EchoConsumer.as_asgi())]
"""


def readme_step(number: int) -> str:
    """Step ``number`` of the README's "Add to an existing Django site", as written there."""
    section = (ROOT / "README.md").read_text().split("## Add to an existing Django site\n", 1)[1]
    section = section.split("\n## ", 1)[0]
    parts = re.split(r"^(\d+)\. ", section, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))[str(number)]


def python_block(step: str) -> str:
    (block,) = re.findall(r"```python\n(.*?)```", step, flags=re.DOTALL)
    return textwrap.dedent(block)


def site_env() -> dict[str, str]:
    """The environment of the site's commands: nothing in it leads to this checkout or its virtualenv."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "DJANGO_SETTINGS_MODULE"}
    }
    outside = [p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith((str(ROOT), sys.prefix))]
    env["PATH"] = os.pathsep.join(outside)
    return env


def run(args: list[str | Path], cwd: Path) -> str:
    result = subprocess.run(
        [str(arg) for arg in args], cwd=cwd, env=site_env(), capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The app's wheel, built as `pip install .` builds it: from a copy, as setuptools leaves build/ behind."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    shutil.copytree(
        ROOT,
        source,
        symlinks=True,
        ignore=shutil.ignore_patterns(
            ".*", "node_modules", "build", "dist", "*.egg-info", "__pycache__", "staticfiles", "db.sqlite3"
        ),
    )
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", work, source], work)
    (built,) = work.glob("kasocki_django-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Step 1: a new virtualenv with the app (and what pyproject.toml declares) and both ASGI servers."""
    assert 'pip install "uvicorn[standard]"' in readme_step(1) and "pip install daphne" in readme_step(1)
    venv = tmp_path_factory.mktemp("venv")
    run([sys.executable, "-m", "venv", "--without-pip", venv], venv.parent)
    # The versions the rest of the suite runs with, which pip's cache holds; a constraint installs nothing itself.
    constraints = venv / "constraints.txt"
    constraints.write_text(re.sub(r"\[[^\]]*\]", "", (ROOT / "requirements.txt").read_text()))
    python = venv / "bin" / "python"
    servers = ["daphne", "uvicorn[standard]"]
    run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "-c", constraints, wheel, *servers], venv)
    return venv


@dataclass
class Site:
    folder: Path
    venv: Path
    topics: dict[str, str]  # one per server


@pytest.fixture(scope="module")
def site(venv: Path, kafka: KafkaTopics, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A new Channels site with its own router, consumer and auth, then steps 2 to 6."""
    topics = {server: kafka.create_topic() for server in SERVERS}
    try:
        python = venv / "bin" / "python"
        parent = tmp_path_factory.mktemp("site")
        run([python, "-m", "django", "startproject", "mysite"], parent)
        folder = parent / "mysite"
        package = folder / "mysite"
        # The app comes from the new virtualenv, not from this checkout.
        found = run([python, "-c", "import kasocki_app; print(kasocki_app.__file__)"], folder)
        assert Path(found.strip()).is_relative_to(venv), found
        (package / "consumers.py").write_text(CONSUMERS)
        (package / "routing.py").write_text(ROUTING)
        settings = package / "settings.py"
        text = settings.read_text()
        # Step 2: the apps.
        assert 'INSTALLED_APPS = ["daphne", ..., "channels", "kasocki_app"]' in readme_step(2)
        text = text.replace("INSTALLED_APPS = [", 'INSTALLED_APPS = [\n    "daphne",', 1)
        for quote in "'\"":  # the project template's quoting
            staticfiles = f"{quote}django.contrib.staticfiles{quote},"
            text = text.replace(staticfiles, f'{staticfiles}\n    "channels",\n    "kasocki_app",')
        assert '"kasocki_app"' in text
        # Step 3: Kafka and the allowed topics.
        text += (
            f'\nKASOCKI_KAFKA_CONFIG = {{"bootstrap.servers": "{kafka.bootstrap}"}}\n'
            f"KASOCKI_ALLOWED_TOPICS = {list(topics.values())!r}\n"
            'ASGI_APPLICATION = "mysite.asgi.application"\n'
        )
        # Step 5: the viewer's socket.io client, from npm.
        staticfiles_dirs = (
            'STATICFILES_DIRS = [("vendor/socket.io-client", BASE_DIR / "node_modules/socket.io-client/dist")]'
        )
        assert staticfiles_dirs in readme_step(5)
        text += staticfiles_dirs + "\n"
        settings.write_text(text)
        # What `npm install socket.io-client` puts there.
        shutil.copytree(
            ROOT / "node_modules" / "socket.io-client" / "dist", folder / "node_modules" / "socket.io-client" / "dist"
        )
        # Step 4: asgi.py exactly as the README writes it.
        (package / "asgi.py").write_text(python_block(readme_step(4)))
        # Step 5: the app's URLs.
        include = 'path("kasocki/", include("kasocki_app.urls"))'
        assert include in readme_step(5)
        urls = package / "urls.py"
        text = urls.read_text().replace("from django.urls import path", "from django.urls import include, path")
        text = re.sub(r"(path\(['\"]admin/['\"], admin\.site\.urls\),)", rf"\1\n    {include},", text)
        assert include in text
        urls.write_text(text)
        # Step 6: tables and the check.
        assert "python manage.py migrate && python manage.py kasocki_check" in readme_step(6)
        run([python, "manage.py", "migrate", "--noinput"], folder)
        assert "ready to serve" in run([python, "manage.py", "kasocki_check"], folder)
        yield Site(folder, venv, topics)
    finally:
        kafka.delete_topics(topics.values())


@dataclass
class Served:
    url: str
    server: str
    topic: str
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="module", params=SERVERS)
def served(request: pytest.FixtureRequest, site: Site) -> Iterator[Served]:
    """Step 7: the site served by one of the servers the README names, from the new virtualenv."""
    server: str = request.param
    assert f"`{server} mysite.asgi:application`" in readme_step(7)
    port = free_port()
    address = ["-b", "127.0.0.1", "-p", str(port)] if server == "daphne" else ["--port", str(port)]
    log = site.folder / f"{server}.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [str(site.venv / "bin" / server), *address, "mysite.asgi:application"],
            cwd=site.folder,
            env=site_env(),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    served = Served(f"http://127.0.0.1:{port}", server, site.topics[server], log)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{served.url}/kasocki/healthz", timeout=5) as response:
                    assert response.status == 200
                    break
            except OSError:
                alive = process.poll() is None
                assert alive and time.monotonic() < deadline, f"{server} did not start:\n{served.log_text()}"
                time.sleep(0.1)  # polling for the server to listen: nothing to await in a sync fixture
        yield served
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_the_app_builds_as_a_wheel_with_its_data(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    for expected in (
        "kasocki_app/service.py",
        "kasocki_app/py.typed",
        "kasocki_app/migrations/0001_initial.py",
        "kasocki_app/templates/kasocki_app/viewer.html",
        "kasocki_app/static/kasocki_app/kasocki-client.js",
    ):
        assert expected in names
    assert not any(name.startswith(("kasocki_project/", "tests/")) for name in names)


def test_every_module_of_the_app_imports_in_the_new_virtualenv(site: Site) -> None:
    """A dependency pyproject.toml leaves out fails here, also in a module the site's requests do not reach."""
    script = (
        "import importlib, os, pkgutil, django\n"
        "os.environ['DJANGO_SETTINGS_MODULE'] = 'mysite.settings'\n"
        "django.setup()\n"
        "import kasocki_app\n"
        "for module in pkgutil.walk_packages(kasocki_app.__path__, 'kasocki_app.'):\n"
        "    importlib.import_module(module.name)\n"
    )
    run([site.venv / "bin" / "python", "-c", script], site.folder)


async def test_the_sites_consumer_still_echoes_behind_its_auth(served: Served) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{served.url}/ws/echo/") as ws:
        assert await ws.receive_str(timeout=10) == "hello AnonymousUser"
        # The second looks like engine.io's OPEN packet: Kasocki must not read the site's traffic.
        for text in ("hi", "0{not engine.io"):
            await ws.send_str(text)
            assert await ws.receive_str(timeout=10) == text


async def test_the_sites_consumer_errors_are_its_servers_to_report(served: Served) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{served.url}/ws/echo/") as ws:
        assert await ws.receive_str(timeout=10) == "hello AnonymousUser"
        await ws.send_str("boom")
        closed = await ws.receive(timeout=10)
    assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), closed
    assert ws.close_code != 1002  # Kasocki's answer to a malformed engine.io packet, not the site's
    # The server logs the traceback, whose last line is the error (not a one-line warning of Kasocki's).
    deadline = time.monotonic() + 10
    while not re.search(r"^RuntimeError: the site's own error$", served.log_text(), flags=re.MULTILINE):
        assert time.monotonic() < deadline, served.log_text()
        await asyncio.sleep(0.05)  # polling the server's log file for the line


async def test_a_socketio_client_reads_a_record(served: Served, kafka: KafkaTopics) -> None:
    client = await RecordingClient().connect(served.url)
    try:
        assert served.topic in await client.next("ready")
        assert [a["topic"] for a in await client.ok("subscribe", served.topic)] == [served.topic]
        kafka.produce(served.topic, [{"by": "socket.io"}])
        message = await client.ok("consume", None)
        assert message["by"] == "socket.io"
    finally:
        await client.close()


async def test_an_http_stream_reads_a_record(served: Served, kafka: KafkaTopics) -> None:
    ((_, offset),) = kafka.produce(served.topic, [{"by": "stream"}])
    event_id = orjson.dumps([{"topic": served.topic, "partition": 0, "offset": offset}]).decode()
    stream = await open_stream(f"{served.url}/kasocki/v2/stream/{served.topic}", {"Last-Event-ID": event_id})
    try:
        assert stream.status == 200
        assert [m["by"] for m in await stream.messages(1)] == ["stream"]
    finally:
        await stream.close()


async def test_the_viewer_page_and_its_static_files_answer(served: Served) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{served.url}/kasocki/") as page:
            assert page.status == 200
            html = await page.text()
        assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', html)
        assert any(asset.endswith("/socket.io.min.js") for asset in assets), html
        assert any(asset.endswith("kasocki_app/viewer.js") for asset in assets), html
        for asset in assets:
            async with http.get(f"{served.url}{asset}") as response:
                assert response.status == 200, f"{asset}: {response.status}"
