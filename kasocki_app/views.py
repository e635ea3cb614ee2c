"""Health endpoints for load balancers and orchestrators, and the live viewer page."""

from __future__ import annotations

import hmac
import ipaddress

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from .access import address_behind_proxies
from .cluster import cluster
from .conf import conf
from .exceptions import KafkaError
from .service import process_service


async def healthz(request: HttpRequest) -> JsonResponse:
    """200 while the process serves requests."""
    return JsonResponse({"status": "ok"})


# Topics of KASOCKI_ALLOWED_TOPICS this process has seen in the cluster: readiness waits for each once.
_seen: set[str] = set()


async def readyz(request: HttpRequest) -> JsonResponse:
    """200 when Kafka answers and every topic of KASOCKI_ALLOWED_TOPICS was there, else 503 with the reason.

    Balancers poll it, so it reads the process's cached metadata (KASOCKI_METADATA_CACHE_SECONDS):
    at most one metadata request per that period, however often it is asked. A process waits for the
    settings' topics once, at its start; one deleted later does not make it unready, or every process
    would leave the balancer at once over one topic. Topics of the admin's whitelist are not awaited
    for the same reason: admins change it for every process at once (docs/deployment.md). A process
    that is stopping (shutdown.py) is unready: balancers send no new clients to it.
    """
    if process_service().stopping:
        return JsonResponse({"status": "unavailable", "reason": "the server is stopping"}, status=503)
    try:
        topics = await cluster.topics()
    except KafkaError as exc:
        return JsonResponse(
            {"status": "unavailable", "reason": exc.message, "code": exc.details.get("code")}, status=503
        )
    _seen.update(name for name in conf.allowed_topics if name in topics)
    # Internal topics are never served (nor listed by cluster.topics()), so never awaited.
    missing = sorted({name for name in conf.allowed_topics if name not in _seen and not name.startswith("__")})
    if missing:
        reason = f"topics of KASOCKI_ALLOWED_TOPICS missing from the cluster: {', '.join(missing)}"
        return JsonResponse({"status": "unavailable", "reason": reason, "missing": missing}, status=503)
    return JsonResponse({"status": "ok", "topics": len(topics)})


# Stands for the topics in the stream URL the viewer page gets; stream-command.js replaces it.
STREAM_TOPICS_PLACEHOLDER = "TOPICS"


def viewer(request: HttpRequest) -> HttpResponse:
    """The live viewer page; its script speaks the Kasocki protocol to this site's socket.io endpoint.

    It also shows the curl command of the HTTP stream for what it shows, so it gets that stream's URL
    as this site routes it: under the prefix the site mounts the app at, in the same URL namespace.
    """
    match = request.resolver_match
    stream_url = reverse(
        "kasocki:stream",
        kwargs={"topics": STREAM_TOPICS_PLACEHOLDER},
        current_app=match.namespace if match is not None else None,
    )
    return render(request, "kasocki_app/viewer.html", {"stream_url": stream_url})


def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus text format: this process's counters and gauges.

    Only for the bearer token KASOCKI_METRICS_TOKEN when one is set, else only for clients in
    KASOCKI_METRICS_NETWORKS (loopback by default): lag labels name topics. The client is judged
    as connection limits judge it: behind a trusted proxy (KASOCKI_TRUSTED_PROXIES), the address
    the proxy forwards, not the proxy's own.
    """
    if conf.metrics_token:
        allowed = hmac.compare_digest(request.headers.get("Authorization", ""), f"Bearer {conf.metrics_token}")
    else:
        address = address_behind_proxies(request.META.get("REMOTE_ADDR", ""), request.headers.get("X-Forwarded-For"))
        try:
            peer = ipaddress.ip_address(address)
        except ValueError:
            peer = None
        allowed = peer is not None and any(peer in ipaddress.ip_network(n, strict=False) for n in conf.metrics_networks)
    if not allowed:
        return HttpResponse("metrics are not available to you\n", status=403, content_type="text/plain")
    return HttpResponse(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)
