"""Mini-program users sign in with `wx.login`'s code and carry short-lived JWTs.

The token's subject is the WeChat user (unionid when the mini program has one, else the
openid), never a Django user: these endpoints get their own authentication class, and the
admin and the other APIs keep theirs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.utils.translation import gettext_lazy as _
from rest_framework.exceptions import AuthenticationFailed
from rest_framework_simplejwt.authentication import JWTAuthentication
from rest_framework_simplejwt.tokens import RefreshToken, Token

_CLAIM_OPENID = "openid"
_CLAIM_APP = "mp"  # the mini program's AppID


@dataclass(frozen=True)
class MiniProgramUser:
    """`request.user` on the mini-program endpoints."""

    app_id: str
    openid: str
    subject: str

    is_authenticated = True
    is_anonymous = False
    is_active = True
    is_staff = False

    @property
    def pk(self) -> str:
        # DRF's per-account throttle keys on this.
        return f"mp:{self.app_id}:{self.openid}"


def tokens_issue(*, app_id: str, openid: str, unionid: str = "") -> dict[str, str]:
    refresh = RefreshToken()
    refresh["sub"] = unionid or openid
    refresh[_CLAIM_OPENID] = openid
    refresh[_CLAIM_APP] = app_id
    return {"access": str(refresh.access_token), "refresh": str(refresh)}


class MiniProgramAuthentication(JWTAuthentication):
    """`Authorization: Bearer <access>`; a token without our claims is refused, not ignored."""

    www_authenticate_realm = "miniprogram"

    def get_user(self, validated_token: Token) -> Any:
        openid = validated_token.get(_CLAIM_OPENID)
        app_id = validated_token.get(_CLAIM_APP)
        subject = validated_token.get("sub")
        if not (isinstance(openid, str) and isinstance(app_id, str) and openid and app_id):
            raise AuthenticationFailed(_("The token is not a mini-program token."))
        return MiniProgramUser(app_id=app_id, openid=openid, subject=str(subject or openid))
