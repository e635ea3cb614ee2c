"""URL routes of the Kasocki project: the admin and the app's pages."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("kasocki_app.urls")),
]
