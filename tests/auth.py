"""A token check for tests of KASOCKI_TOKEN_AUTHENTICATOR: tokens are "token-<username>"."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model


async def token_user(token: str) -> Any:
    if not token.startswith("token-"):
        return None
    return await get_user_model().objects.filter(username=token.removeprefix("token-")).afirst()
