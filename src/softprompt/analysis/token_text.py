"""Token ids as readable text: real bytes behind byte-level and SentencePiece markers, scripts, special tokens.

A neighbour table is only as readable as its tokens: `Ġ`/`▁` become a visible space, byte fragments show
as `<0xNN>` instead of garbage, and each token is tagged with its writing system (`analysis.scripts`).
"""

from __future__ import annotations

import codecs
import functools
import unicodedata
from collections.abc import Sequence
from typing import Any

from softprompt.analysis.scripts import script_counts, token_script
from softprompt.model.reparam import special_token_ids

VISIBLE_SPACE = "\u2423"  # ␣


@functools.cache
def _byte_decoder() -> dict[str, int]:
    """Inverse of the GPT-2 byte-level alphabet: printable stand-in character -> byte."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = list(keep)
    extra = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(keep, chars, strict=True)}


def _hex_errors(err: UnicodeDecodeError) -> tuple[str, int]:
    return "".join(f"<0x{b:02X}>" for b in err.object[err.start : err.end]), err.end


codecs.register_error("softprompt-hex", _hex_errors)


def _is_byte_level(tokenizer) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return "ByteLevel" in repr(backend.decoder) or "ByteLevel" in repr(backend.pre_tokenizer)
    return hasattr(tokenizer, "byte_decoder")


class TokenReader:
    """Turns token ids into (bytes, display text, script) for one tokenizer, caching its facts.

    Byte-level BPE (GPT-2, SmolLM2, BLOOM) stores bytes as stand-in characters (`Ġ` = space);
    SentencePiece (Gemma, Llama-2) uses `▁` for a space and `<0xNN>` byte-fallback tokens. Both are
    mapped back to real bytes, so a token holding half of a UTF-8 character shows as `<0xE4>` and is
    tagged as a byte fragment instead of printing as garbage.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.byte_level = _is_byte_level(tokenizer)
        self.special = special_token_ids(tokenizer)
        self.decoder = _byte_decoder()

    def raw(self, ids: Sequence[int]) -> list[str | None]:
        toks = self.tokenizer.convert_ids_to_tokens([int(i) for i in ids])
        return list(toks) if isinstance(toks, list) else [toks]

    def to_bytes(self, raw: str) -> bytes:
        if self.byte_level and all(c in self.decoder for c in raw):
            return bytes(self.decoder[c] for c in raw)
        if len(raw) == 6 and raw.startswith("<0x") and raw.endswith(">"):
            try:
                return bytes([int(raw[3:5], 16)])
            except ValueError:
                pass
        return raw.replace("\u2581", " ").encode("utf-8")

    def describe(self, ids: Sequence[int]) -> list[dict[str, Any]]:
        """For each id: display text, script tag and whether it is special."""
        out = []
        for i, raw in zip(ids, self.raw(ids), strict=True):
            i = int(i)
            if raw is None:
                out.append({"token": f"[unused id {i}]", "script": "other", "special": False})
                continue
            if i in self.special:
                out.append({"token": f"{raw} [special]", "script": token_script(raw, special=True), "special": True})
                continue
            data = self.to_bytes(raw)
            out.append({"token": visible(data), "script": token_script(data), "special": False})
        return out

    def readable(self, token_id: int) -> str:
        return self.describe([token_id])[0]["token"]


def visible(data: bytes) -> str:
    """Token bytes as printable text: spaces as ␣, \\n and \\t escaped, invalid UTF-8 and control bytes as <0xNN>."""
    text = data.decode("utf-8", errors="softprompt-hex")
    out = []
    for ch in text:
        if ch == " ":
            out.append(VISIBLE_SPACE)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn") or (unicodedata.category(ch) == "Zs" and ch != " "):
            out.append("".join(f"<0x{b:02X}>" for b in ch.encode("utf-8")))
        else:
            out.append(ch)
    return "".join(out)


def readable_token(tokenizer, token_id: int) -> str:
    """One token id as a human-readable string for tables and figures.

    Byte-level markers (Ġ, ▁) become a visible space ␣; special tokens are marked, e.g.
    `<|im_end|> [special]`; bytes that are not valid UTF-8 alone show as `<0xNN>`.
    """
    return TokenReader(tokenizer).readable(token_id)


def vocabulary_scripts(tokenizer, n_tokens: int | None = None) -> dict[str, int]:
    """Script counts over the whole vocabulary: the base rate against which neighbour scripts are judged."""
    n = len(tokenizer) if n_tokens is None else n_tokens
    reader = TokenReader(tokenizer)
    return script_counts(d["script"] for d in reader.describe(range(n)))
