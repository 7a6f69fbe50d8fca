//! What a detokenizer derives once from `tokenizer.json` and shares between its streams.

use crate::error::{Error, Result};
use std::str::FromStr;
use tokenizers::Tokenizer;

/// Which mlx-lm detokenizer class to reproduce, with the options mlx-lm derives for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `NaiveStreamingDetokenizer`: re-decodes the current line with the tokenizer.
    /// `trim_trailing_space` is mlx-lm's `_clean_spaces` probe; `clean_up_spaces` is
    /// transformers' `clean_up_tokenization` pass inside `tokenizer.decode`.
    Naive {
        trim_trailing_space: bool,
        clean_up_spaces: bool,
    },
    /// `SPMStreamingDetokenizer(trim_space=...)`.
    Spm { trim_space: bool },
    /// `BPEStreamingDetokenizer`.
    Bpe,
}

/// The tokenizer and the per-id tables one [`Kind`] needs.
pub struct Tables {
    kind: Kind,
    vocab_len: usize,
    /// Naive: the tokenizer that `tokenizer.decode` runs.
    tokenizer: Option<Tokenizer>,
    /// Naive: ids whose token is a `<0xHH>` byte, whose text depends on the bytes after them.
    byte_tokens: Vec<bool>,
    /// SPM: each id's bytes (a `<0xHH>` token is its byte).
    spm_bytes: Vec<Vec<u8>>,
    /// BPE: each id's token string, in GPT-2's byte-to-character alphabet.
    bpe_pieces: Vec<String>,
}

/// GPT-2's byte-level alphabet inverted: character code -> byte, for the codes below 0x144.
const BYTE_ALPHABET_LEN: usize = 0x144;

fn byte_alphabet() -> [i16; BYTE_ALPHABET_LEN] {
    let mut table = [-1i16; BYTE_ALPHABET_LEN];
    let printable = |b: u32| {
        (u32::from(b'!')..=u32::from(b'~')).contains(&b)
            || (0xA1..=0xAC).contains(&b)
            || (0xAE..=0xFF).contains(&b)
    };
    let mut shifted = 0;
    for b in 0u32..256 {
        if printable(b) {
            table[b as usize] = b as i16;
        } else {
            table[(256 + shifted) as usize] = b as i16;
            shifted += 1;
        }
    }
    table
}

fn byte_of(c: char) -> Option<u8> {
    static TABLE: std::sync::OnceLock<[i16; BYTE_ALPHABET_LEN]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(byte_alphabet);
    let code = c as usize;
    (code < BYTE_ALPHABET_LEN && table[code] >= 0).then(|| table[code] as u8)
}

/// Parses `<0xHH>` the way mlx-lm's SPM table does: `int(t[3:5], 16)` for any token that
/// starts with `<0x`.
fn spm_byte(token: &str) -> Option<std::result::Result<u8, ()>> {
    let rest = token.strip_prefix("<0x")?;
    let digits: String = rest.chars().take(2).collect();
    let digits = digits.trim();
    let digits = digits.strip_prefix('+').unwrap_or(digits);
    Some(u8::from_str_radix(digits, 16).map_err(|_| ()))
}

/// The ByteFallback decoder's test for a byte token.
fn is_byte_fallback(token: &str) -> bool {
    token.len() == 6
        && token.starts_with("<0x")
        && token.ends_with('>')
        && u8::from_str_radix(&token[3..5], 16).is_ok()
}

impl Tables {
    /// Builds the tables for `kind` from the text of a `tokenizer.json`.
    pub fn new(tokenizer_json: &str, kind: Kind) -> Result<Tables> {
        let tokenizer = Tokenizer::from_str(tokenizer_json).map_err(|e| {
            Error::value(
                "StreamingDetokenizer",
                "tokenizer_json",
                "a tokenizer.json the tokenizers library loads",
                format!("an error: {e}"),
            )
        })?;
        // transformers' len(tokenizer), which bounds mlx-lm's token tables.
        let vocab_len = tokenizer.get_vocab_size(true);
        let token = |id: usize| tokenizer.id_to_token(id as u32).unwrap_or_default();
        let mut tables = Tables {
            kind,
            vocab_len,
            tokenizer: None,
            byte_tokens: Vec::new(),
            spm_bytes: Vec::new(),
            bpe_pieces: Vec::new(),
        };
        match kind {
            Kind::Naive { .. } => {
                tables.byte_tokens = (0..vocab_len)
                    .map(|id| is_byte_fallback(&token(id)))
                    .collect();
                tables.tokenizer = Some(tokenizer);
            }
            Kind::Spm { .. } => {
                tables.spm_bytes = (0..vocab_len)
                    .map(|id| {
                        let t = token(id);
                        match spm_byte(&t) {
                            None => Ok(t.into_bytes()),
                            Some(Ok(b)) => Ok(vec![b]),
                            Some(Err(())) => Err(Error::value(
                                "StreamingDetokenizer",
                                "tokenizer_json",
                                "byte tokens of the form <0xHH>",
                                format!("token {id} {t:?}"),
                            )),
                        }
                    })
                    .collect::<Result<_>>()?;
            }
            Kind::Bpe => tables.bpe_pieces = (0..vocab_len).map(token).collect(),
        }
        Ok(tables)
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn vocab_len(&self) -> usize {
        self.vocab_len
    }

    /// `tokenizer.decode(ids)` without transformers' space clean-up.
    pub(super) fn decode(&self, ids: &[u32]) -> String {
        let tokenizer = self
            .tokenizer
            .as_ref()
            .expect("decode is only called by the naive detokenizer, which has a tokenizer");
        // Decoders only fail on malformed decoder configs, which loading already rejected;
        // mlx-lm would raise there too, and an empty piece keeps the stream going.
        tokenizer.decode(ids, false).unwrap_or_default()
    }

    pub(super) fn is_byte_token(&self, id: u32) -> bool {
        self.byte_tokens.get(id as usize).copied().unwrap_or(false)
    }

    pub(super) fn spm_bytes(&self, id: u32) -> Option<&[u8]> {
        self.spm_bytes.get(id as usize).map(Vec::as_slice)
    }

    /// mlx-lm maps ids past its table (a padded model vocabulary) to "!".
    pub(super) fn bpe_piece(&self, id: u32) -> &str {
        self.bpe_pieces.get(id as usize).map_or("!", String::as_str)
    }

    /// mlx-lm's `_decode_bytes`: a character outside the byte alphabet, and the one that
    /// stands for byte 0 (its `if res:` test), contribute their own UTF-8 bytes.
    pub(super) fn bpe_decode_lenient(&self, pieces: &str) -> String {
        let mut bytes = Vec::with_capacity(pieces.len());
        for c in pieces.chars() {
            match byte_of(c) {
                Some(b) if b != 0 => bytes.push(b),
                _ => push_utf8(&mut bytes, c),
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// mlx-lm's `finalize` decoding, which maps every character through the byte alphabet.
    /// Where mlx-lm raises `KeyError` (a character outside it), the character is kept.
    pub(super) fn bpe_decode_strict(&self, pieces: &str) -> String {
        let mut bytes = Vec::with_capacity(pieces.len());
        for c in pieces.chars() {
            match byte_of(c) {
                Some(b) => bytes.push(b),
                None => push_utf8(&mut bytes, c),
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

fn push_utf8(bytes: &mut Vec<u8>, c: char) {
    let mut buf = [0u8; 4];
    bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_alphabet_matches_gpt2() {
        assert_eq!(byte_of('!'), Some(b'!'));
        assert_eq!(byte_of('\u{100}'), Some(0));
        assert_eq!(byte_of('\u{120}'), Some(b' '));
        assert_eq!(byte_of('\u{143}'), Some(0xAD));
        assert_eq!(byte_of(' '), None);
        assert_eq!(byte_of('中'), None);
    }

    #[test]
    fn spm_byte_tokens_parse_like_python_int() {
        assert_eq!(spm_byte("<0x0A>"), Some(Ok(10)));
        assert_eq!(spm_byte("<0xE4>"), Some(Ok(0xE4)));
        assert_eq!(spm_byte("<0xZZ>"), Some(Err(())));
        assert_eq!(spm_byte("hello"), None);
    }
}
