"""SFT sample formats: which format a row is in, and the row as pieces of text with what the loss covers.

This module decides what is learnt of each row; it does not tokenize (``tokenize`` does).

Formats (``train.data.format``):
  - ``alpaca``: ``instruction``, optional ``input``, ``output``; rendered with ``ALPACA_PROMPT``
    as ``<bos> prompt output <eos>``; the loss covers ``output <eos>``.
  - ``chat``: ShareGPT ``conversations`` (``from`` human/gpt/system, ``value``) or ``messages``
    (``role``/``content``), rendered with the tokenizer's chat template, else with
    ``DEFAULT_CHAT_TEMPLATE``::

        <bos><|system|>\\n...\\n<|user|>\\n...\\n<|assistant|>\\n...<eos>\\n

    The loss covers each assistant turn's text up to and including the template's ``eos_token``
    (found by rendering growing prefixes of the conversation; a template whose rendering of a
    prefix is not a prefix of the whole is an error).
  - ``text``: a ``text`` field, ``<bos> text <eos>``, loss on every token.
  - ``auto``: picked from the fields of the first row.
With ``completion_only: false`` every token is learnt.
"""

from __future__ import annotations

from typing import Any

from hpcft.errors import ConfigError

FORMATS = ("alpaca", "chat", "text")
ALPACA_PROMPT = "### Instruction:\n{instruction}\n\n### Response:\n"
ALPACA_PROMPT_INPUT = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
DEFAULT_CHAT_TEMPLATE = (
    "{% if bos_token %}{{ bos_token }}{% endif %}"
    "{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}

Piece = tuple[str | list[int], bool]  # text (or token ids) and whether the loss covers it


class RowError(ValueError):
    """One row does not fit its format (turned into a ``ConfigError`` naming the row)."""


def detect_format(row: dict[str, Any]) -> str:
    """``alpaca``, ``chat`` or ``text`` from the fields of a row."""
    if "instruction" in row and "output" in row:
        return "alpaca"
    if row.get("conversations") is not None or row.get("messages") is not None:
        return "chat"
    if "text" in row:
        return "text"
    raise ConfigError(
        [
            f"cannot tell the data format from the fields {sorted(row)}: expected instruction/output "
            "(alpaca), conversations or messages (chat), or text (HINT: set train.data.format)"
        ]
    )


def _text_field(row: dict[str, Any], name: str, fmt: str, required: bool = True) -> str:
    value = row.get(name)
    if value is None and not required:
        return ""
    if value is None:
        raise RowError(f"missing field '{name}' (format {fmt})")
    if not isinstance(value, str):
        raise RowError(f"field '{name}' is {type(value).__name__}, expected text (format {fmt})")
    return value


def _prompt_completion(row: dict[str, Any], fmt: str) -> tuple[str, str]:
    if fmt == "text":
        return "", _text_field(row, "text", fmt)
    instruction, output = _text_field(row, "instruction", fmt), _text_field(row, "output", fmt)
    inp = _text_field(row, "input", fmt, required=False)
    template = ALPACA_PROMPT_INPUT if inp else ALPACA_PROMPT
    return template.format(instruction=instruction, input=inp), output


def split_sample(row: dict[str, Any], fmt: str, where: str) -> tuple[str, str]:
    """(prompt, completion) of an ``alpaca`` or ``text`` row; the loss covers only the completion."""
    try:
        return _prompt_completion(row, fmt)
    except RowError as e:
        raise ConfigError([f"{where}: {e}"]) from None


def chat_messages(row: dict[str, Any]) -> list[dict[str, str]]:
    """The ``messages`` (role/content) or ShareGPT ``conversations`` (from/value) of a row, as messages."""
    if row.get("messages") is not None:
        key, role_key, text_key, roles = "messages", "role", "content", None
    elif row.get("conversations") is not None:
        key, role_key, text_key, roles = "conversations", "from", "value", SHAREGPT_ROLES
    else:
        raise RowError("missing field 'conversations' or 'messages' (format chat)")
    turns = row[key]
    if not isinstance(turns, list) or not turns:
        raise RowError(f"field '{key}' must be a non-empty list of turns, got {turns!r:.60}")
    out = []
    for i, turn in enumerate(turns, 1):
        if not isinstance(turn, dict):
            raise RowError(f"turn {i} of '{key}' is {type(turn).__name__}, expected an object")
        try:
            role, text = (_text_field(turn, k, "chat") for k in (role_key, text_key))
        except RowError as e:
            raise RowError(f"turn {i} of '{key}': {e}") from None
        if roles is not None and role not in roles:
            raise RowError(f"turn {i} of '{key}': field 'from' is {role!r}, expected one of {', '.join(roles)}")
        out.append({"role": roles[role] if roles else role, "content": text})
    return out


def chat_template(tokenizer) -> str:
    """The tokenizer's chat template, else ``DEFAULT_CHAT_TEMPLATE``."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # several named templates: the one apply_chat_template uses by default
        template = template.get("default")
    return template or DEFAULT_CHAT_TEMPLATE


def chat_pieces(messages: list[dict[str, str]], tokenizer, template: str, completion_only: bool) -> list[Piece]:
    """The rendered conversation cut into pieces; with ``completion_only`` only assistant text is learnt."""

    import jinja2

    def render(msgs: list[dict[str, str]], gen: bool = False) -> str:
        try:
            return tokenizer.apply_chat_template(
                msgs, chat_template=template, tokenize=False, add_generation_prompt=gen
            )
        except (jinja2.TemplateError, ValueError) as e:  # e.g. raise_exception('roles must alternate')
            raise RowError(f"the chat template rejects the conversation: {e}") from None

    full = render(messages)
    if not completion_only:
        return [(full, True)]
    pieces: list[Piece] = []
    done = 0
    eos = tokenizer.eos_token or ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        head, upto = render(messages[:i], gen=True), render(messages[: i + 1])
        if not (full.startswith(upto) and upto.startswith(head) and len(head) >= done):
            raise RowError(
                f"the chat template renders turn {i + 1} differently inside the whole conversation, so its "
                "assistant text cannot be located (HINT: set train.data.completion_only: false)"
            )
        body = full[len(head) : len(upto)]
        cut = body.rfind(eos) + len(eos) if eos and eos in body else len(body)
        pieces += [(full[done : len(head)], False), (body[:cut], True), (body[cut:], False)]
        done = len(upto)
    return [*pieces, (full[done:], False)]


def sample_pieces(row: dict[str, Any], fmt: str, tokenizer, template: str, completion_only: bool) -> list[Piece]:
    """The pieces of one row in format ``fmt``; raises ``RowError`` if the row does not fit it."""
    if fmt == "chat":
        return chat_pieces(chat_messages(row), tokenizer, template, completion_only)
    prompt, completion = _prompt_completion(row, fmt)
    return completion_pieces(tokenizer, prompt, completion, learn_prompt=fmt == "text" or not completion_only)


def completion_pieces(tokenizer, prompt: str, completion: str, learn_prompt: bool) -> list[Piece]:
    """``<bos> prompt completion <eos>``; the loss covers ``completion <eos>`` (and the prompt if asked)."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    return [(bos, learn_prompt), (prompt, learn_prompt), (completion, True), (eos, True)]
