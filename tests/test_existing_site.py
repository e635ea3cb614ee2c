"""Follow the README's "Add to an existing Django site" steps in a throwaway project."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import orjson
import pytest

from tests.clients import RecordingClient
from tests.live_server import free_port
from tests.sse_client import open_stream

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.django_db(transaction=True)


def test_the_app_builds_as_a_wheel_with_its_data(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("kasocki_django-*.whl")
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


def run(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


async def test_readme_steps_in_a_new_project(tmp_path, kafka, make_topic):
    topic = make_topic()
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    # Step 1 is the pip install: this environment has the app installed; run from outside the checkout.
    env["PYTHONPATH"] = str(tmp_path / "mysite")
    run([sys.executable, "-m", "django", "startproject", "mysite"], tmp_path, env)
    site = tmp_path / "mysite"
    settings = site / "mysite" / "settings.py"
    text = settings.read_text()
    # Step 2: the apps.
    text = text.replace("INSTALLED_APPS = [", 'INSTALLED_APPS = [\n    "daphne",', 1)
    for quote in "'\"":  # the project template's quoting
        staticfiles = f"{quote}django.contrib.staticfiles{quote},"
        text = text.replace(staticfiles, f'{staticfiles}\n    "channels",\n    "kasocki_app",')
    assert '"kasocki_app"' in text
    # Step 3: Kafka and the allowed topics.
    text += (
        f'\nKASOCKI_KAFKA_CONFIG = {{"bootstrap.servers": "{kafka.bootstrap}"}}\n'
        f'KASOCKI_ALLOWED_TOPICS = ["{topic}"]\n'
        'ASGI_APPLICATION = "mysite.asgi.application"\n'
    )
    settings.write_text(text)
    # Step 4: socket.io next to Django.
    (site / "mysite" / "asgi.py").write_text(
        "import os\n"
        "from django.core.asgi import get_asgi_application\n\n"
        'os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")\n'
        "django_application = get_asgi_application()\n\n"
        "from kasocki_app.server import build_asgi_application  # noqa: E402\n\n"
        "application = build_asgi_application(django_application)\n"
    )
    # Step 5: the app's URLs.
    urls = site / "mysite" / "urls.py"
    urls.write_text(
        urls.read_text()
        .replace("from django.urls import path", "from django.urls import include, path")
        .replace(
            "path('admin/', admin.site.urls),",
            "path('admin/', admin.site.urls),\n    path('kasocki/', include('kasocki_app.urls')),",
        )
        .replace(
            'path("admin/", admin.site.urls),',
            'path("admin/", admin.site.urls),\n    path("kasocki/", include("kasocki_app.urls")),',
        )
    )
    # Step 6: tables and the check.
    run([sys.executable, "manage.py", "migrate", "--noinput"], site, env)
    assert "ready to serve" in run([sys.executable, "manage.py", "kasocki_check"], site, env)
    # Step 7: serve it and connect a socket.io client.
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--port", str(port), "mysite.asgi:application"],
        cwd=site,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/kasocki/healthz", timeout=5) as response:
                    assert response.status == 200
                    break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "the new site did not start"
                await asyncio.sleep(0.1)
        client = await RecordingClient().connect(url)
        assert await client.next("ready") == [topic]
        assert await client.ok("subscribe", topic) == [{"topic": topic, "partition": 0, "offset": 0}]
        await client.close()
        # And an HTTP stream under the prefix the site mounted the app's URLs at.
        kafka.produce(topic, [{"i": 0}])
        event_id = orjson.dumps([{"topic": topic, "partition": 0, "offset": 0}]).decode()
        stream = await open_stream(f"{url}/kasocki/v2/stream/{topic}", {"Last-Event-ID": event_id})
        assert stream.status == 200
        assert [m["i"] for m in await stream.messages(1)] == [0]
        await stream.close()
    finally:
        server.terminate()
        server.wait(15)
