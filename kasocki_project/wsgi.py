"""WSGI entry point for Django pages only; socket.io needs the ASGI application."""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kasocki_project.settings")
application = get_wsgi_application()
