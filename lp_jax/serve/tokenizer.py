"""Text <-> token ids for the server: a HuggingFace tokenizer folder (tokenizer.json through the
`tokenizers` library, tokenizer_config.json's special tokens and chat template, or a
chat_template.jinja beside it) or the same documents built from a GGUF file's metadata.

Chat templates are rendered with jinja2 in a sandbox, as transformers renders them (trim_blocks,
lstrip_blocks, `raise_exception`, `tojson`), with `messages`, `add_generation_prompt` and the
special tokens as variables.
"""

from __future__ import annotations

import json
from pathlib import Path


class ChatTemplateError(ValueError):
    """The model has no chat template, or its template refused the messages."""


class TextTokenizer:
    def __init__(self, tokenizer_json: dict | str, config: dict, chat_template: str | None = None,
                 source: str = ""):
        from tokenizers import Tokenizer

        text = tokenizer_json if isinstance(tokenizer_json, str) else json.dumps(tokenizer_json)
        self.tokenizer = Tokenizer.from_str(text)
        self.config = config
        self.source = source
        self.chat_template = chat_template or _template_of(config)
        self._template = None

    @staticmethod
    def from_folder(folder) -> "TextTokenizer":
        """From tokenizer.json (required), tokenizer_config.json and chat_template.jinja (optional)."""
        folder = Path(folder)
        if not (folder / "tokenizer.json").is_file():
            raise ValueError(f"no tokenizer.json in {folder}")
        config_path = folder / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        template_path = folder / "chat_template.jinja"
        template = template_path.read_text() if template_path.is_file() else None
        return TextTokenizer((folder / "tokenizer.json").read_text(), config, template, str(folder))

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_strings(self, ids) -> list[str]:
        return [self.tokenizer.id_to_token(int(i)) or "" for i in ids]

    def special_token(self, name: str) -> str | None:
        """bos_token, eos_token, ...: a string, or the "content" of an AddedToken-shaped entry."""
        value = self.config.get(name)
        return value.get("content") if isinstance(value, dict) else value

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """The prompt text of a conversation; ChatTemplateError if there is no template or it fails."""
        import jinja2

        if not self.chat_template:
            raise ChatTemplateError(f"the tokenizer ({self.source or 'given'}) has no chat template; use "
                                    "/v1/completions or start the server with --tokenizer DIR holding one")
        if self._template is None:
            self._template = _environment().from_string(self.chat_template)
        try:
            return self._template.render(
                messages=messages, add_generation_prompt=add_generation_prompt,
                bos_token=self.special_token("bos_token") or "", eos_token=self.special_token("eos_token") or "")
        except jinja2.TemplateError as e:
            raise ChatTemplateError(f"the chat template refused the messages: {e}") from None


def _template_of(config: dict) -> str | None:
    """tokenizer_config.json's chat_template: a string, or a list of named templates (take "default")."""
    template = config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        return named.get("default")
    return template


def _environment():
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    env.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False, indent=indent)
    return env
