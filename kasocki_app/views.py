"""Health endpoints for load balancers and orchestrators, and the live viewer page."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from .exceptions import KafkaError
from .kafka import cluster


async def healthz(request: HttpRequest) -> JsonResponse:
    """200 while the process serves requests."""
    return JsonResponse({"status": "ok"})


async def readyz(request: HttpRequest) -> JsonResponse:
    """200 when Kafka answers a metadata request, else 503 with the reason."""
    try:
        topics = await cluster.topics(fresh=True)
    except KafkaError as exc:
        return JsonResponse(
            {"status": "unavailable", "reason": exc.message, "code": exc.details.get("code")}, status=503
        )
    return JsonResponse({"status": "ok", "topics": len(topics)})


def viewer(request: HttpRequest) -> HttpResponse:
    """The live viewer page; its script speaks the Kasocki protocol to this site's socket.io endpoint."""
    return render(request, "kasocki_app/viewer.html")
