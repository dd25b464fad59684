"""Prompt formats: the task's plain template, or the same text inside the model's chat template.

An instruction-tuned model (SmolLM2-135M-Instruct) was trained on chat-formatted text; asked a
question as plain text, it answers from the wrong "mode". The `chat` format puts the example in a
user turn and scores each answer as the first words of the assistant's turn:

    [soft prompt] <chat template up to the user's text> [hard prompt \n] context <chat template
    up to the assistant's text> answer

The soft prompt stays at the very front of the row, where PEFT's prompt tuning puts it, so an
exported adapter is the same kind of object (its users must format inputs with the chat template).
The trailing answer cue of a template ("Answer:") is dropped inside the user turn: the assistant
turn is the cue. `auto` picks `chat` when the tokenizer ships a chat template, else `plain`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from softprompt.config import PROMPT_FORMATS
from softprompt.errors import SoftPromptError

_SENTINEL = "SOFTPROMPT-CONTENT-5f0c2"
_ANSWER_CUE = re.compile(r"\s*\n?\s*Answer:\s*$")


def resolve_prompt_format(prompt_format: str, tokenizer) -> str:
    """`plain` or `chat` for a configured format (`auto` follows the tokenizer)."""
    if prompt_format not in PROMPT_FORMATS:
        raise SoftPromptError(f"unknown prompt_format {prompt_format!r}: expected one of {', '.join(PROMPT_FORMATS)}")
    if prompt_format == "auto":
        return "chat" if getattr(tokenizer, "chat_template", None) else "plain"
    if prompt_format == "chat" and not getattr(tokenizer, "chat_template", None):
        raise SoftPromptError(
            f"prompt_format 'chat' needs a tokenizer with a chat template; {type(tokenizer).__name__} "
            f"({getattr(tokenizer, 'name_or_path', '?')}) has none: use 'plain' or 'auto'"
        )
    return prompt_format


@dataclass(frozen=True)
class ChatLayout:
    """The chat template's token ids before and after the user's text (computed once per tokenizer)."""

    head: tuple[int, ...]
    tail: tuple[int, ...]

    @classmethod
    def of(cls, tokenizer) -> ChatLayout:
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": _SENTINEL}], tokenize=False, add_generation_prompt=True
        )
        if rendered.count(_SENTINEL) != 1:
            raise SoftPromptError("the tokenizer's chat template does not place the user's text exactly once")
        head, tail = rendered.split(_SENTINEL)
        encode = lambda s: tuple(tokenizer(s, add_special_tokens=False)["input_ids"]) if s else ()  # noqa: E731
        return cls(encode(head), encode(tail))


def chat_context(context: str) -> str:
    """The user's text for a task context: the template's trailing answer cue removed."""
    return _ANSWER_CUE.sub("", context)


def chat_choice(choice: str) -> str:
    """An answer at the start of the assistant's turn has no leading space."""
    return choice.lstrip()
