"""Tokenization helpers shared by the task generators and ``PromptPairTask``."""

from __future__ import annotations

def encode(tokenizer_or_model, text: str, prepend_bos: bool) -> list[int]:
    """Token ids of ``text`` (with BOS first if ``prepend_bos``), by a model's ``to_tokens`` or a tokenizer; never cut
    to the model's context (a prompt longer than it is the caller's to refuse)."""
    if hasattr(tokenizer_or_model, "to_tokens"):  # HookedTransformer / TransformerBridge
        try:
            return tokenizer_or_model.to_tokens(text, prepend_bos=prepend_bos, truncate=False)[0].tolist()
        except TypeError:  # a to_tokens without truncate (it does not cut, then)
            return tokenizer_or_model.to_tokens(text, prepend_bos=prepend_bos)[0].tolist()
    tok = tokenizer_or_model
    ids = tok.encode(text, add_special_tokens=False)
    if prepend_bos:
        if tok.bos_token_id is None:
            raise ValueError("prepend_bos=True but the tokenizer has no BOS token")
        ids = [tok.bos_token_id] + ids
    return ids


def answer_token_id(tokenizer_or_model, answer: str, row: int | str | None = None) -> int:
    """The single token id of ``answer``; ``ValueError`` if it is not exactly one token (naming ``row``: an
    index, or a label such as ``"pairs.csv line 4"``)."""
    tok = tokenizer_of(tokenizer_or_model)
    ids = tok.encode(answer, add_special_tokens=False)
    if len(ids) != 1:
        where = "" if row is None else f"{row}: " if isinstance(row, str) else f"row {row}: "
        pieces = [tok.decode([i]) for i in ids]
        raise ValueError(f"{where}answer {answer!r} is {len(ids)} tokens {pieces}, but answers must be single tokens")
    return ids[0]


def tokenizer_of(model_or_tok):
    """The Hugging Face tokenizer of a model (or the tokenizer itself)."""
    tok = getattr(model_or_tok, "tokenizer", None) or model_or_tok
    if not hasattr(tok, "encode"):
        raise ValueError(f"{type(model_or_tok).__name__} has no tokenizer; build the task with from_tokens")
    return tok


def n_tokens(model_or_tok, text: str) -> int:
    """How many tokens ``text`` is, without special tokens."""
    return len(tokenizer_of(model_or_tok).encode(text, add_special_tokens=False))


def single_token_words(model_or_tok, words, prefix: str = " ") -> list[str]:
    """The words that are exactly one token when written with ``prefix`` (a leading space)."""
    return [w for w in words if n_tokens(model_or_tok, prefix + w) == 1]


def default_prepend_bos(model_or_tok, prepend_bos: bool | None) -> bool:
    """``prepend_bos`` if given, else the model's ``cfg.default_prepend_bos`` (False for a bare tokenizer)."""
    if prepend_bos is not None:
        return prepend_bos
    cfg = getattr(model_or_tok, "cfg", None)
    return bool(getattr(cfg, "default_prepend_bos", False)) if cfg is not None else False

