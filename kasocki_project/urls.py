"""URL routes of the Kasocki project: the admin, the app's pages and, in development, static files."""

from __future__ import annotations

import re

from django.conf import settings
from django.contrib import admin
from django.contrib.staticfiles.views import serve
from django.http import FileResponse, HttpRequest, HttpResponse, HttpResponseBase
from django.urls import URLPattern, URLResolver, include, path, re_path

urlpatterns: list[URLPattern | URLResolver] = [
    path("admin/", admin.site.urls),
    path("", include("kasocki_app.urls")),
]


def serve_static(request: HttpRequest, path: str) -> HttpResponseBase:
    """A file found by the staticfiles finders, read whole (ASGI servers warn about sync file streams)."""
    response = serve(request, path, insecure=True)
    if not isinstance(response, FileResponse):  # 304 Not Modified
        return response
    try:
        return HttpResponse(response.getvalue(), status=response.status_code, headers=response.headers)
    finally:
        response.close()


if settings.SERVE_STATIC:
    # staticfiles_urlpatterns() only exists while DEBUG is on, and only runserver adds static serving by
    # itself; this route serves static files through the Django ASGI app under daphne and uvicorn too,
    # and in the tests, which run with DEBUG off.
    prefix = re.escape(settings.STATIC_URL.lstrip("/"))
    urlpatterns += [re_path(rf"^{prefix}(?P<path>.*)$", serve_static)]
