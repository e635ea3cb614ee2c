"""ASGI entry point: socket.io at /socket.io/, everything else to Django.

Serve with `manage.py runserver`, `daphne kasocki_project.asgi:application` or
`uvicorn kasocki_project.asgi:application`.
"""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kasocki_project.settings")
# Set Django up before importing anything that touches models or settings.
django_application = get_asgi_application()

from kasocki_app.server import build_asgi_application  # noqa: E402

application = build_asgi_application(django_application)
