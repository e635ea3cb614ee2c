"""Who a socket.io client is: its network address and its Django user (session cookie or token)."""

from __future__ import annotations

import inspect
import ipaddress
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from importlib import import_module
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth import aget_user
from django.contrib.auth.models import AnonymousUser
from django.http import HttpRequest
from django.utils.module_loading import import_string

from .conf import conf
from .exceptions import AuthenticationFailedError


@dataclass(frozen=True)
class Principal:
    """What topic access depends on, resolved once at connect."""

    username: str = ""
    authenticated: bool = False
    superuser: bool = False
    group_ids: frozenset[int] = field(default_factory=frozenset)
    permissions: frozenset[str] = field(default_factory=frozenset)


ANONYMOUS = Principal()


def client_address(environ: dict[str, Any]) -> str:
    """The client's IP: the ASGI peer, or X-Forwarded-For when the peer is a trusted proxy.

    Under python-socketio's ASGI app REMOTE_ADDR is always 127.0.0.1; the peer is in the scope.
    """
    client = environ.get("asgi.scope", {}).get("client")
    peer = client[0] if client else environ.get("REMOTE_ADDR", "")
    return address_behind_proxies(peer, environ.get("HTTP_X_FORWARDED_FOR"))


def address_behind_proxies(peer: str, forwarded: str | None) -> str:
    """The client behind ``peer``: its X-Forwarded-For is believed only when ``peer`` is a trusted proxy."""
    if not forwarded or not _trusted(peer):
        return peer
    # Walk the chain from the right: the first address not of a trusted proxy is the client.
    for hop in reversed([h.strip() for h in forwarded.split(",") if h.strip()]):
        if not _trusted(hop):
            return hop
    return peer


def _trusted(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(net, strict=False) for net in conf.trusted_proxies)


async def principal_for(environ: dict[str, Any], auth: Any) -> Principal:
    """The connecting user: a token in the socket.io ``auth`` payload, else the Django session cookie."""
    token = auth.get("token") if isinstance(auth, dict) else None
    if token is not None:
        return await _from_token(token)
    cookies = SimpleCookie(environ.get("HTTP_COOKIE", ""))
    morsel = cookies.get(settings.SESSION_COOKIE_NAME)
    if morsel is None or not morsel.value:
        return ANONYMOUS
    request = HttpRequest()  # aget_user reads only its session
    request.session = import_module(settings.SESSION_ENGINE).SessionStore(morsel.value)
    user = await aget_user(request)
    return await _principal(user)


async def _from_token(token: Any) -> Principal:
    path = conf.token_authenticator
    if not path:
        raise AuthenticationFailedError("this server does not accept tokens")
    if not isinstance(token, str) or not token or len(token) > conf.max_string_length:
        raise AuthenticationFailedError("the token must be a non-empty string")
    check = import_string(path)
    user = check(token)
    if inspect.isawaitable(user):
        user = await user
    if user is None or not getattr(user, "is_authenticated", False) or not getattr(user, "is_active", True):
        raise AuthenticationFailedError("the token was not accepted")
    return await _principal(user)


@database_sync_to_async
def _principal(user: Any) -> Principal:
    if user is None or isinstance(user, AnonymousUser) or not user.is_authenticated or not user.is_active:
        return ANONYMOUS
    return Principal(
        username=user.get_username(),
        authenticated=True,
        superuser=user.is_superuser,
        group_ids=frozenset(user.groups.values_list("id", flat=True)),
        permissions=frozenset(user.get_all_permissions()),
    )
