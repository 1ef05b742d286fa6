"""Generated token ids -> text deltas, one per token, with stop strings checked on the text.

Incremental detokenization: each new token decodes a short window (the tokens since the last
emitted text, plus a few before it for context, so decoders that drop a leading space see one) and
emits what the window added; a window ending in an incomplete UTF-8 sequence (U+FFFD) emits
nothing until the bytes are complete. Cost per token is the window, not the whole output.

Stop strings (OpenAI's `stop`): the text is cut before the first occurrence, which is not
returned. While the text ends in a prefix of some stop string, that suffix is held back, so a
client never sees the start of a stop string that then completes.
"""

from __future__ import annotations

REPLACEMENT = "\ufffd"
CONTEXT_TOKENS = 5  # prompt tokens the first window starts with


class TextStream:
    def __init__(self, tokenizer, prompt_ids: list[int], stop: tuple[str, ...] = ()):
        self.tokenizer = tokenizer
        self.ids = list(prompt_ids[-CONTEXT_TOKENS:])
        self.prefix_offset = 0  # window start
        self.read_offset = len(self.ids)  # tokens before it are already text
        self.stop = tuple(s for s in stop if s)
        self.text = ""  # all generated text so far (cut at a stop string)
        self.sent = 0  # characters of `text` handed out
        self.stopped_by: str | None = None

    def push(self, token_id: int) -> str:
        """Add one generated token; the text it releases (possibly ""). After a stop string
        matched (stopped_by is set) nothing more is released."""
        if self.stopped_by is not None:
            return ""
        self.ids.append(int(token_id))
        before = self.tokenizer.decode(self.ids[self.prefix_offset:self.read_offset])
        after = self.tokenizer.decode(self.ids[self.prefix_offset:])
        if len(after) > len(before) and not after.endswith(REPLACEMENT):
            self.text += after[len(before):]
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            self._check_stop()
        return self._release(final=self.stopped_by is not None)

    def finish(self) -> str:
        """Whatever is still held back, once the request has ended."""
        return self._release(final=True)

    def _check_stop(self) -> None:
        # A match can only involve the newly added text and the last len(stop)-1 characters before it.
        longest = max(map(len, self.stop), default=0)
        start = max(0, self.sent - longest)
        hits = [(i, s) for s in self.stop if (i := self.text.find(s, start)) >= 0]
        if hits:
            i, s = min(hits)
            self.text, self.stopped_by = self.text[:i], s

    def _held_back(self) -> int:
        """Characters at the end of `text` that could begin a stop string."""
        held = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(self.text)), held, -1):
                if self.text.endswith(s[:k]):
                    held = k
                    break
        return held

    def _release(self, final: bool) -> str:
        end = len(self.text) if final else len(self.text) - self._held_back()
        out = self.text[self.sent:end] if end > self.sent else ""
        self.sent = max(self.sent, end)
        return out
