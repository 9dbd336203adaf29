"""An answer's text as it streams: whole UTF-8 characters, cut at the first stop string.

Kept apart from the scheduler because it is pure byte handling that mirrors
llama-cpp-python's `_create_completion`, which is what keeps both engines' text identical.
"""

from __future__ import annotations

from collections.abc import Sequence


class AnswerText:
    """An answer's bytes, released as whole UTF-8 characters that cannot start a stop string.

    It follows llama-cpp-python's `_create_completion` so both engines return the same text:
    a token ending inside a multibyte character is held back (and not checked against stop
    strings or max_tokens until the character completes), and the answer is cut at the
    first stop string.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [stop.encode("utf-8") for stop in stops if stop]
        self._longest_stop = max((len(stop) for stop in self._stops), default=0)
        self._data = bytearray()
        self._released = 0
        self._end: int | None = None  # where a stop string begins, once found
        self._multibyte_fix = 0

    def add(self, piece: bytes) -> bool:
        """Append one token's bytes; False while they leave a multibyte character open."""
        self._data += piece
        # llama-cpp-python's check, verbatim, so a held token behaves identically.
        for index, char in enumerate(self._data[-3:]):
            k = 3 - index
            for num, pattern in ((2, 192), (3, 224), (4, 240)):
                if num > k and pattern & char == pattern:
                    self._multibyte_fix = num - k
        if self._multibyte_fix > 0:
            self._multibyte_fix -= 1
            return False
        return True

    def find_stop(self) -> bool:
        """Whether the text now contains a stop string; the answer then ends before it."""
        if not self._stops:
            return False
        start = max(0, self._released - self._longest_stop)
        found = [self._data.find(stop, start) for stop in self._stops]
        hits = [index for index in found if index >= 0]
        if not hits:
            return False
        self._end = min(hits)
        return True

    def release(self) -> str:
        """The text that is safe to stream now."""
        end = len(self._data) - self._stop_prefix_length()
        end = complete_utf8_end(self._data, self._released, end)
        if end <= self._released:
            return ""
        text = self._data[self._released : end].decode("utf-8", errors="ignore")
        self._released = end
        return text

    def finish(self) -> str:
        """Everything not streamed yet, up to a stop string; an unfinished character is dropped."""
        end = len(self._data) if self._end is None else self._end
        text = self._data[self._released : end].decode("utf-8", errors="ignore")
        self._released = max(self._released, end)
        return text

    def _stop_prefix_length(self) -> int:
        """Length of the longest unreleased suffix that a stop string starts with."""
        pending = bytes(self._data[self._released :])
        held = 0
        for stop in self._stops:
            for length in range(min(len(stop), len(pending)), held, -1):
                if pending.endswith(stop[:length]):
                    held = length
                    break
        return held


def complete_utf8_end(data: bytearray, start: int, end: int) -> int:
    """Move `end` back so that data[start:end] does not end inside a multibyte character."""
    for back in range(1, min(4, end - start) + 1):
        byte = data[end - back]
        if byte & 0xC0 == 0x80:  # continuation byte: keep looking for the lead byte
            continue
        if byte >= 0xC0:
            needed = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return end - back if needed > back else end
        return end
    return end
