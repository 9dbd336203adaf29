"""Split streamed output of reasoning models into reasoning and answer.

DeepSeek-R1 distills and Qwen3 wrap their reasoning in ``<think>…</think>``; WeCom shows
it as a collapsible block, so the stream must be split as it arrives, one piece at a time.
"""

from __future__ import annotations

OPEN_TAG = "<think>"
CLOSE_TAG = "</think>"

_START = "start"  # nothing decisive seen yet: only whitespace or a prefix of OPEN_TAG
_THINK = "think"  # inside an explicit (or assumed) reasoning block
_UNTAGGED = "untagged"  # no opening tag; answer so far, unless a lone CLOSE_TAG turns up
_ANSWER = "answer"  # the reasoning block is over; everything else is answer text


def _partial_tag_length(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag`."""
    for length in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:length]):
            return length
    return 0


class ThinkSplitter:
    """Incremental parser whose result depends only on the text fed so far, not on how it was cut.

    An opening tag counts only at the very start (after whitespace). Without one, text before
    the first ``</think>`` is reasoning (R1 distills often omit the opening tag), so it moves
    from `answer` to `reasoning` when that tag arrives. A trailing fragment that may still
    become a tag is held back until the next piece or `finish()`.
    """

    def __init__(self, *, starts_in_think: bool = False) -> None:
        # starts_in_think: the chat template already opened the block (newer R1 templates
        # end the prompt with "<think>\n"), so output is reasoning until "</think>".
        self._starts_in_think = starts_in_think
        self._mode = _START
        self._pending = ""
        self._reasoning = ""
        self._answer = ""
        self._finished = False

    @property
    def reasoning(self) -> str:
        text = self._reasoning.lstrip()
        return text.rstrip() if self._mode == _ANSWER else text

    @property
    def answer(self) -> str:
        return self._answer.lstrip()

    @property
    def in_think(self) -> bool:
        return self._mode == _THINK or (self._mode == _START and self._starts_in_think)

    def feed(self, piece: str) -> None:
        if self._finished:
            raise RuntimeError("ThinkSplitter.feed() called after finish()")
        self._pending += piece
        self._advance(final=False)

    def finish(self) -> None:
        """Flush held-back text at the end of the stream; a partial tag is just text then."""
        if not self._finished:
            self._advance(final=True)
            self._finished = True

    def _advance(self, *, final: bool) -> None:
        while True:
            if self._mode == _START:
                stripped = self._pending.lstrip()
                if stripped.startswith(OPEN_TAG):
                    self._pending = stripped[len(OPEN_TAG) :]
                    self._mode = _THINK
                elif not final and OPEN_TAG.startswith(stripped):
                    return  # still only whitespace or a prefix of the opening tag
                else:
                    self._mode = _THINK if self._starts_in_think else _UNTAGGED
            elif self._mode in (_THINK, _UNTAGGED):
                index = self._pending.find(CLOSE_TAG)
                if index >= 0:
                    closed = self._pending[:index]
                    if self._mode == _UNTAGGED:
                        closed = self._answer + closed
                        self._answer = ""
                    self._reasoning += closed
                    self._pending = self._pending[index + len(CLOSE_TAG) :]
                    self._mode = _ANSWER
                    continue
                keep = 0 if final else _partial_tag_length(self._pending, CLOSE_TAG)
                settled = self._pending[: len(self._pending) - keep]
                self._pending = self._pending[len(self._pending) - keep :]
                if self._mode == _THINK:
                    self._reasoning += settled
                else:
                    self._answer += settled
                return
            else:
                self._answer += self._pending
                self._pending = ""
                return
