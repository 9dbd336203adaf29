"""How a reasoning model's answer is shown in a WeCom stream message.

WeCom renders `<think>…</think>` at the start of a stream `content` as a collapsible block;
this is display markup of the WeCom protocol, independent of how the model wrote its output.
"""

from __future__ import annotations

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


def wecom_stream_content(reasoning: str, answer: str, *, thinking_done: bool) -> str:
    """Render a WeCom stream `content`: `<think>reasoning</think>answer`.

    The think tag is closed even mid-reasoning because WeCom only renders a complete block;
    the block is left out when there is no reasoning, and the answer waits until it is done.
    """
    if not thinking_done:
        answer = ""
    if not reasoning.strip():
        return answer
    return f"{THINK_OPEN}{reasoning}{THINK_CLOSE}{answer}"
