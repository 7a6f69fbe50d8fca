"""The Rust detokenizer against the mlx-lm detokenizer that mlx-lm itself picks, token by
token, for tokenizers of every detokenizer path, loaded through mlx-lm's own loading."""

from __future__ import annotations

import copy
import random

import pytest
import zmlx_rs
from mlx_lm.tokenizer_utils import StreamingDetokenizer as MlxStreamingDetokenizer
from mlx_lm.tokenizer_utils import load as load_tokenizer
from tokenizer_fixtures import CORPUS, TOKENIZERS, write_tokenizer
from zmlx_rs.detok import StreamingDetokenizer, detokenizer_for

NAMES = sorted(TOKENIZERS)


@pytest.fixture(scope="module", params=NAMES)
def wrapper(request, tmp_path_factory):
    folder = write_tokenizer(request.param, tmp_path_factory.mktemp(request.param))
    return load_tokenizer(folder)


def streams(wrapper):
    """mlx-lm's detokenizer and ours, both fresh."""
    ours = detokenizer_for(wrapper)
    assert ours is not None
    ours.reset()
    return wrapper.detokenizer, ours


def assert_same_stream(wrapper, ids, rng=None):
    """Feeds `ids` to both; after each token reads last_segment (or, with `rng`, sometimes
    text, sometimes nothing) and compares; then finalize and compare everything."""
    theirs, ours = streams(wrapper)
    for i, token in enumerate(ids):
        theirs.add_token(token)
        ours.add_token(token)
        read = "last_segment" if rng is None else rng.choice(["last_segment", "text", None])
        if read is not None:
            expected, got = getattr(theirs, read), getattr(ours, read)
            assert got == expected, (read, i, ids[max(0, i - 4) : i + 1])
    theirs.finalize()
    ours.finalize()
    assert ours.last_segment == theirs.last_segment
    assert ours.text == theirs.text
    assert ours.tokens == theirs.tokens
    assert ours.offset == theirs.offset


@pytest.mark.parametrize("name", NAMES)
def test_mlx_lm_picks_the_expected_class(name, tmp_path):
    wrapper = load_tokenizer(write_tokenizer(name, tmp_path))
    _, expected = TOKENIZERS[name]
    assert type(wrapper._detokenizer).__name__ == expected
    kind = {"NaiveStreamingDetokenizer": "naive", "SPMStreamingDetokenizer": "spm"}
    assert detokenizer_for(wrapper).kind == kind.get(expected, "bpe")


CASES = {
    "ascii": "Hello world! This is a tiny corpus, for tiny tokenizers.",
    "cjk": "我爱自然语言处理。今天天气很好！日本語のテキスト",
    "emoji_zwj": "family 👨‍👩‍👧‍👦 flag 🏳️‍🌈 wave 👋🏽 🇫🇷😀",
    "combining": "e\u0301 a\u0308 n\u0303 \u1e9b\u0323 z\u0351\u0352a\u0353l",
    "leading_spaces": "   three spaces, then    four",
    "newlines": "line one\nline two\n\n\nafter blanks\r\nwindows\n",
    "clean_up": "Don't stop , we 're here . I 'm sure it 's fine ? Yes ! ' quoted '",
    "unseen_chars": "Ωμέγα ☃ ∑∫ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𓀀",
    "corpus": "\n".join(CORPUS),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_encoded_text_streams_identically(wrapper, case):
    ids = wrapper.encode(CASES[case], add_special_tokens=False)
    assert_same_stream(wrapper, ids)


def test_special_tokens_stream_identically(wrapper):
    specials = list(wrapper.all_special_ids)
    body = wrapper.encode("  Hi 👋🏽 there,\nfriend. 中文", add_special_tokens=False)
    assert_same_stream(wrapper, specials + body + specials + body[:3] + specials)


def test_bytes_that_become_valid_later(wrapper):
    """Every prefix of a multi-byte character is held back until the character completes."""
    vocab = wrapper.get_vocab()
    ids = wrapper.encode("x", add_special_tokens=False)
    for char in "中👨‍👩‍👧é":
        pieces = [vocab[f"<0x{b:02X}>"] for b in char.encode() if f"<0x{b:02X}>" in vocab]
        ids += pieces or wrapper.encode(char, add_special_tokens=False)
        ids += wrapper.encode(" y", add_special_tokens=False)
    # A lone lead byte followed by ASCII never becomes valid.
    if "<0xE4>" in vocab:
        ids += [vocab["<0xE4>"], *wrapper.encode("z", add_special_tokens=False)]
    assert_same_stream(wrapper, ids)


@pytest.mark.parametrize("seed", range(40))
def test_random_token_ids_stream_identically(wrapper, seed):
    rng = random.Random(seed)
    ids = [rng.randrange(len(wrapper)) for _ in range(rng.randrange(1, 300))]
    assert_same_stream(wrapper, ids, rng=rng if seed % 2 else None)


@pytest.mark.parametrize("seed", range(20))
def test_random_slices_of_real_text_stream_identically(wrapper, seed):
    rng = random.Random(seed)
    ids = wrapper.encode("\n".join(CORPUS * 3), add_special_tokens=False)
    start = rng.randrange(len(ids))
    assert_same_stream(wrapper, ids[start : start + 400], rng=rng if seed % 2 else None)


def test_long_line_without_newlines(wrapper):
    ids = wrapper.encode(
        " ".join(c.replace("\n", " ") for c in CORPUS * 8), add_special_tokens=False
    )
    assert_same_stream(wrapper, ids)


def test_copies_are_independent_and_reset_clears(wrapper):
    _, ours = streams(wrapper)
    ids = wrapper.encode("abc def", add_special_tokens=False)
    for t in ids:
        ours.add_token(t)
    twin = copy.copy(ours)
    twin.add_token(ids[0])
    assert ours.tokens == ids
    assert twin.tokens == [*ids, ids[0]]
    ours.reset()
    assert (ours.tokens, ours.text, ours.offset, ours.last_segment) == ([], "", 0, "")
    assert isinstance(ours, MlxStreamingDetokenizer)


def test_offset_is_settable_like_mlx_lm(wrapper):
    theirs, ours = streams(wrapper)
    for t in wrapper.encode("one two\nthree", add_special_tokens=False):
        theirs.add_token(t)
        ours.add_token(t)
    assert ours.last_segment == theirs.last_segment
    theirs.offset = ours.offset = 2
    assert ours.last_segment == theirs.last_segment


def test_patch_and_unpatch_swap_the_wrapper_detokenizer(wrapper):
    original = wrapper._detokenizer
    assert zmlx_rs.patch_tokenizer(wrapper)
    try:
        assert isinstance(wrapper.detokenizer, StreamingDetokenizer)
        assert zmlx_rs.patch_tokenizer(wrapper)  # idempotent
    finally:
        assert zmlx_rs.unpatch_tokenizer(wrapper)
    assert wrapper._detokenizer is original
    assert not zmlx_rs.unpatch_tokenizer(wrapper)


def test_patch_tokenizer_rejects_a_bare_hf_tokenizer(wrapper):
    with pytest.raises(zmlx_rs.ZmlxError, match="TokenizerWrapper"):
        zmlx_rs.patch_tokenizer(wrapper._tokenizer)


def test_custom_detokenizer_class_is_left_alone(wrapper):
    class Custom(type(wrapper._detokenizer)):
        pass

    original = wrapper._detokenizer
    wrapper._detokenizer = copy.copy(original)
    wrapper._detokenizer.__class__ = Custom
    try:
        assert not zmlx_rs.patch_tokenizer(wrapper)
    finally:
        wrapper._detokenizer = original


def test_bad_arguments_raise_zmlx_errors(wrapper):
    json_text = wrapper._tokenizer.backend_tokenizer.to_str()
    with pytest.raises(zmlx_rs.ZmlxError, match="'kind'"):
        StreamingDetokenizer(json_text, "wordpiece")
    with pytest.raises(zmlx_rs.ZmlxError, match="tokenizer_json"):
        StreamingDetokenizer("{not json", "bpe")
    spm = StreamingDetokenizer(json_text, "spm")
    with pytest.raises(zmlx_rs.ZmlxError, match="'token'"):
        spm.add_token(len(wrapper) + 5)
