"""Tiny tokenizers trained offline with the `tokenizers` trainers, one per mlx-lm detokenizer
path, written as tokenizer.json + tokenizer_config.json so mlx-lm's own loading reads them."""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

# Text the tokenizers learn from and the tests stream: ASCII, CJK, emoji (with ZWJ sequences
# and skin tones), combining marks, leading spaces, newlines and punctuation that
# transformers' clean-up rewrites.
CORPUS = [
    "Hello world! This is a tiny corpus, for tiny tokenizers.",
    "  Leading spaces, trailing spaces  \n\nand blank lines\n",
    "def add(a, b):\n    return a + b\n",
    "我爱自然语言处理。今天天气很好！",
    "日本語のテキストも少し。カタカナ、ひらがな。",
    "Emoji: 👍 👨‍👩‍👧‍👦 🏳️‍🌈 👋🏽 🇫🇷 😀😃😄",
    "Combining: e\u0301 a\u0308 n\u0303 \u1e9b\u0323 Zalgo: z\u0351\u0352a\u0353l",
    "Don't stop, we're here . I'm sure it 's fine ? Yes ! They've gone , ok ' quoted '",
    "Numbers 1234567890 and symbols @#$%^&*()_+-=[]{}|;:<>/~`",
    "Ünïcödé àccénts çà et là, ñandú, straße, Ελληνικά, русский текст.",
    "tabs\tand\ttabs\r\nwindows line\r\n",
]

SPECIAL = ["<unk>", "<s>", "</s>"]
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]


def _corpus(repeat: int = 20) -> list[str]:
    return CORPUS * repeat


def _write(folder: Path, tokenizer: Tokenizer, config: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    return folder


def byte_level_bpe(folder: Path, vocab_size: int = 400) -> Path:
    """GPT-2/Qwen style: ByteLevel pre-tokenizer and decoder (mlx-lm's BPE detokenizer)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer)
    return _write(
        folder,
        tok,
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "eos_token": "<|endoftext|>",
            "pad_token": "<|endoftext|>",
            "clean_up_tokenization_spaces": False,
        },
    )


def _spm_bpe(vocab_size: int) -> dict:
    """A Llama-style byte-fallback BPE: `<unk> <s> </s>`, the 256 byte tokens, then merges."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence(
        [normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL, show_progress=False
    )
    tok.train_from_iterator(_corpus(), trainer)
    spec = json.loads(tok.to_str())
    learned = sorted(spec["model"]["vocab"].items(), key=lambda kv: kv[1])
    vocab = {t: i for i, t in enumerate(SPECIAL + BYTE_TOKENS)}
    for token, _ in learned:
        vocab.setdefault(token, len(vocab))
    spec["model"]["vocab"] = vocab
    spec["model"]["byte_fallback"] = True
    spec["model"]["fuse_unk"] = True
    spec["pre_tokenizer"] = None
    spec["added_tokens"] = [
        {
            "id": i,
            "content": t,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i, t in enumerate(SPECIAL)
    ]
    return spec


def _spm_decoder(strip: bool) -> dict:
    steps = [
        {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
        {"type": "ByteFallback"},
        {"type": "Fuse"},
    ]
    if strip:
        steps.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
    return {"type": "Sequence", "decoders": steps}


def _llama_config(**extra: object) -> dict:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "clean_up_tokenization_spaces": False,
        **extra,
    }


def _save_spec(folder: Path, spec: dict, config: dict) -> Path:
    return _write(folder, Tokenizer.from_str(json.dumps(spec)), config)


def sentencepiece_bpe(folder: Path, vocab_size: int = 500, strip: bool = True) -> Path:
    """Llama/Mistral style (Replace, ByteFallback, Fuse[, Strip]): mlx-lm's SPM
    detokenizer, with `trim_space` when the decoder strips the leading space."""
    spec = _spm_bpe(vocab_size)
    spec["decoder"] = _spm_decoder(strip)
    return _save_spec(folder, spec, _llama_config())


def byte_fallback_naive(folder: Path, vocab_size: int = 500) -> Path:
    """Byte-fallback BPE whose decoder mlx-lm does not recognise (ByteFallback, then
    Metaspace): mlx-lm's naive detokenizer over a decoder that joins byte runs."""
    spec = _spm_bpe(vocab_size)
    spec["decoder"] = {
        "type": "Sequence",
        "decoders": [
            {"type": "ByteFallback"},
            {
                "type": "Metaspace",
                "replacement": "\u2581",
                "prepend_scheme": "always",
                "split": True,
            },
        ],
    }
    return _save_spec(folder, spec, _llama_config())


def metaspace_unigram(folder: Path, vocab_size: int = 300) -> Path:
    """SentencePiece-Unigram style with a Metaspace decoder: mlx-lm's naive detokenizer."""
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL, unk_token="<unk>", show_progress=False
    )
    tok.train_from_iterator(_corpus(), trainer)
    return _write(folder, tok, _llama_config())


def wordpiece(folder: Path, vocab_size: int = 400) -> Path:
    """BERT style WordPiece with transformers' space clean-up: mlx-lm's naive detokenizer."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=specials, show_progress=False
    )
    tok.train_from_iterator(_corpus(), trainer)
    return _write(
        folder,
        tok,
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "unk_token": "[UNK]",
            "sep_token": "[SEP]",
            "eos_token": "[SEP]",
            "pad_token": "[PAD]",
            "clean_up_tokenization_spaces": True,
        },
    )


# name -> (writer, the mlx-lm detokenizer class it selects)
TOKENIZERS = {
    "byte_level_bpe": (byte_level_bpe, "BPEStreamingDetokenizer"),
    "sentencepiece_bpe": (sentencepiece_bpe, "SPMStreamingDetokenizer"),
    "sentencepiece_bpe_no_strip": (
        lambda folder: sentencepiece_bpe(folder, strip=False),
        "SPMStreamingDetokenizer",
    ),
    "byte_fallback_naive": (byte_fallback_naive, "NaiveStreamingDetokenizer"),
    "metaspace_unigram": (metaspace_unigram, "NaiveStreamingDetokenizer"),
    "wordpiece": (wordpiece, "NaiveStreamingDetokenizer"),
}


def write_tokenizer(name: str, folder: Path) -> Path:
    """Writes tokenizer `name` of TOKENIZERS into `folder`."""
    writer, _ = TOKENIZERS[name]
    return writer(folder)
