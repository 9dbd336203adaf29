"""The AI bot's long-connection mode (WeCom doc 101463): frames, client, replies, media."""

from wecom.longconn.client import LongConnClient
from wecom.longconn.frames import DEFAULT_URL, Ack, Frame, FrameError, parse_frame
from wecom.longconn.media import MediaError, media_decrypt, media_download
from wecom.longconn.replies import StreamReply
from wecom.longconn.state import (
    AckError,
    AckTimeout,
    AuthGiveUp,
    Backoff,
    ConnectionPhase,
    ConnectionState,
    NotConnected,
)
from wecom.longconn.throttle import RateBudget, RateLimits

__all__ = [
    "DEFAULT_URL",
    "Ack",
    "AckError",
    "AckTimeout",
    "AuthGiveUp",
    "Backoff",
    "ConnectionPhase",
    "ConnectionState",
    "Frame",
    "FrameError",
    "LongConnClient",
    "MediaError",
    "NotConnected",
    "RateBudget",
    "RateLimits",
    "StreamReply",
    "media_decrypt",
    "media_download",
    "parse_frame",
]
