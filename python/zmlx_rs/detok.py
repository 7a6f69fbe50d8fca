"""A Rust streaming detokenizer in place of mlx-lm's Python ones.

`patch_tokenizer(wrapper)` swaps the detokenizer of an mlx-lm `TokenizerWrapper` for
`StreamingDetokenizer`, which reproduces the class mlx-lm picked for that tokenizer (naive,
SPM or BPE) segment for segment, at a cost per token that does not grow with the text.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from zmlx_rs._native import StreamingDetokenizer
from zmlx_rs.errors import ZmlxError

if TYPE_CHECKING:
    from mlx_lm.tokenizer_utils import TokenizerWrapper

__all__ = ["StreamingDetokenizer", "detokenizer_for", "patch_tokenizer", "unpatch_tokenizer"]

# Where patch_tokenizer keeps mlx-lm's own detokenizer, for unpatch_tokenizer.
_ORIGINAL = "_zmlx_rs_original_detokenizer"


@functools.cache
def _mlx_lm() -> Any:
    """mlx-lm's tokenizer module, imported on first use (it imports transformers)."""
    from mlx_lm import tokenizer_utils

    # mlx-lm code that checks isinstance(..., StreamingDetokenizer) accepts ours.
    tokenizer_utils.StreamingDetokenizer.register(StreamingDetokenizer)
    return tokenizer_utils


def _decodes_like_tokenizers(hf: Any) -> bool:
    """Whether `hf.decode` is transformers' plain path over the `tokenizers` backend."""
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    cls = type(hf)
    return cls.decode is PreTrainedTokenizerBase.decode and cls._decode is TokenizersBackend._decode


def _clean_up_spaces(hf: Any) -> bool:
    """Whether transformers' `_decode` runs `clean_up_tokenization` for this tokenizer."""
    if not hf.clean_up_tokenization_spaces:
        return False
    # transformers skips the clean-up for BPE models unless told to corrupt their output.
    is_bpe = type(hf.backend_tokenizer.model).__name__ == "BPE"
    return not is_bpe or bool(
        hf.clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output
    )


def detokenizer_for(wrapper: TokenizerWrapper) -> StreamingDetokenizer | None:
    """The Rust detokenizer that reproduces `wrapper`'s mlx-lm detokenizer, or None where it
    cannot (a custom detokenizer class, or a tokenizer whose decode is not `tokenizers`')."""
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    mlx_lm = _mlx_lm()
    if not isinstance(wrapper, mlx_lm.TokenizerWrapper):
        raise ZmlxError(
            f"patch_tokenizer(): 'tokenizer' must be an mlx_lm TokenizerWrapper, "
            f"got {type(wrapper).__name__}"
        )
    hf = wrapper._tokenizer
    mlx = getattr(wrapper, _ORIGINAL, wrapper._detokenizer)
    if not isinstance(hf, TokenizersBackend) or (
        type(hf).convert_ids_to_tokens is not TokenizersBackend.convert_ids_to_tokens
    ):
        return None
    tokenizer_json = hf.backend_tokenizer.to_str()
    if type(mlx) is mlx_lm.NaiveStreamingDetokenizer:
        if not _decodes_like_tokenizers(hf):
            return None
        return StreamingDetokenizer(
            tokenizer_json,
            "naive",
            trim_trailing_space=mlx._clean_spaces,
            clean_up_spaces=_clean_up_spaces(hf),
        )
    if type(mlx) is mlx_lm.SPMStreamingDetokenizer:
        return StreamingDetokenizer(tokenizer_json, "spm", trim_space=mlx.trim_space)
    if type(mlx) is mlx_lm.BPEStreamingDetokenizer:
        return StreamingDetokenizer(tokenizer_json, "bpe")
    return None


def patch_tokenizer(tokenizer: TokenizerWrapper) -> bool:
    """Puts the Rust detokenizer into mlx-lm's `TokenizerWrapper`; `tokenizer.detokenizer`
    then hands out copies of it. Returns whether it did (False: mlx-lm's stays)."""
    if isinstance(getattr(tokenizer, "_detokenizer", None), StreamingDetokenizer):
        return True
    ours = detokenizer_for(tokenizer)
    if ours is None:
        return False
    setattr(tokenizer, _ORIGINAL, tokenizer._detokenizer)
    tokenizer._detokenizer = ours
    return True


def unpatch_tokenizer(tokenizer: TokenizerWrapper) -> bool:
    """Gives `tokenizer` its mlx-lm detokenizer back. Returns whether it had ours."""
    original = tokenizer.__dict__.pop(_ORIGINAL, None)
    if original is None:
        return False
    tokenizer._detokenizer = original
    return True
