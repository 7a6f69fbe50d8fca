//! Streaming detokenizers that reproduce mlx-lm's three classes (`NaiveStreamingDetokenizer`,
//! `SPMStreamingDetokenizer`, `BPEStreamingDetokenizer`) character for character, built from
//! the tokenizer's own `tokenizer.json`, at a cost per token that does not grow with the text.
//!
//! The Python-visible semantics are mlx-lm's: `text` is everything readable so far,
//! `last_segment` is `text[offset:]` (in characters) and moves `offset` to the end, and the
//! naive variant only commits a line when `text` is read and ends with a newline.

mod naive;
mod tables;

pub use tables::{Kind, Tables};

use crate::error::{Error, Result};
use naive::NaiveLine;
use std::sync::Arc;

/// Which of mlx-lm's algorithms runs, with its per-stream state.
#[derive(Clone)]
enum State {
    Naive(NaiveLine),
    /// Bytes of tokens not yet decoded (held back while they end in an incomplete character).
    Spm(Vec<u8>),
    /// Byte-level characters of tokens not yet decoded.
    Bpe(String),
}

/// One stream of generated tokens turned into text.
#[derive(Clone)]
pub struct Detokenizer {
    tables: Arc<Tables>,
    state: State,
    tokens: Vec<u32>,
    /// Text that never changes again: all of it for SPM/BPE, the finished lines for naive.
    committed: String,
    committed_chars: usize,
    /// mlx-lm's `offset`, in characters of `text`.
    offset: usize,
    /// Where `offset` lies in `committed` while it lies there: (chars, bytes).
    offset_hint: (usize, usize),
}

impl Detokenizer {
    pub fn new(tables: Arc<Tables>) -> Self {
        let state = Self::fresh_state(&tables);
        Detokenizer {
            tables,
            state,
            tokens: Vec::new(),
            committed: String::new(),
            committed_chars: 0,
            offset: 0,
            offset_hint: (0, 0),
        }
    }

    fn fresh_state(tables: &Tables) -> State {
        match tables.kind() {
            Kind::Naive {
                clean_up_spaces, ..
            } => State::Naive(NaiveLine::new(clean_up_spaces)),
            Kind::Spm { .. } => State::Spm(Vec::new()),
            Kind::Bpe => State::Bpe(String::new()),
        }
    }

    pub fn reset(&mut self) {
        self.state = Self::fresh_state(&self.tables);
        self.tokens.clear();
        self.committed.clear();
        self.committed_chars = 0;
        self.offset = 0;
        self.offset_hint = (0, 0);
    }

    pub fn kind(&self) -> Kind {
        self.tables.kind()
    }

    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    pub fn offset(&self) -> usize {
        self.offset
    }

    pub fn set_offset(&mut self, offset: usize) {
        self.offset = offset;
    }

    pub fn add_token(&mut self, token: u32) -> Result<()> {
        match &mut self.state {
            State::Naive(line) => line.push(token),
            State::Spm(unflushed) => {
                let bytes = self.tables.spm_bytes(token).ok_or_else(|| {
                    Error::value(
                        "add_token",
                        "token",
                        format!("an id below {}", self.tables.vocab_len()),
                        token,
                    )
                })?;
                unflushed.extend_from_slice(bytes);
                self.tokens.push(token);
                self.flush_spm(false);
                return Ok(());
            }
            State::Bpe(unflushed) => {
                let piece = self.tables.bpe_piece(token);
                unflushed.push_str(piece);
                let text = self.tables.bpe_decode_lenient(unflushed);
                // mlx-lm holds an incomplete character, and a lone space token until the
                // next token shows whether it needs trimming.
                let lone_space = piece == "\u{120}";
                if !text.ends_with('\u{fffd}') && !lone_space {
                    unflushed.clear();
                    self.push_trimmed_bpe(&text);
                }
            }
        }
        self.tokens.push(token);
        Ok(())
    }

    pub fn finalize(&mut self) {
        match &mut self.state {
            State::Naive(line) => {
                let text = line.finish(&self.tables);
                self.commit(&text);
            }
            State::Spm(_) => {
                self.flush_spm(true);
                if let State::Spm(unflushed) = &mut self.state {
                    unflushed.clear();
                }
            }
            State::Bpe(unflushed) => {
                let text = self.tables.bpe_decode_strict(unflushed);
                unflushed.clear();
                self.push_trimmed_bpe(&text);
            }
        }
    }

    /// mlx-lm's `text` (for the naive variant this commits a finished line, as mlx-lm does).
    pub fn text(&mut self) -> String {
        let tail_len = self.refresh();
        let mut text = String::with_capacity(self.committed.len() + tail_len);
        text.push_str(&self.committed);
        text.push_str(self.tail());
        text
    }

    /// mlx-lm's `last_segment`: `text[offset:]`, then `offset = len(text)`.
    pub fn last_segment(&mut self) -> String {
        self.refresh();
        let segment = if self.offset <= self.committed_chars {
            let start = self.committed_byte_at(self.offset);
            let tail = self.tail();
            let mut s = String::with_capacity(self.committed.len() - start + tail.len());
            s.push_str(&self.committed[start..]);
            s.push_str(tail);
            s
        } else {
            match &mut self.state {
                State::Naive(line) => line
                    .current_from_char(self.offset - self.committed_chars)
                    .to_string(),
                _ => String::new(),
            }
        };
        self.offset = self.committed_chars
            + match &self.state {
                State::Naive(line) => line.current_chars(),
                _ => 0,
            };
        segment
    }

    /// The naive line's text after `committed`.
    fn tail(&self) -> &str {
        match &self.state {
            State::Naive(line) => line.current(),
            _ => "",
        }
    }

    /// Brings the naive line up to date and commits it when it ends a line; returns its length.
    fn refresh(&mut self) -> usize {
        let State::Naive(line) = &mut self.state else {
            return 0;
        };
        line.refresh(&self.tables);
        if line.current().ends_with('\n') {
            let text = line.current().to_string();
            line.clear();
            self.commit(&text);
            return 0;
        }
        line.current().len()
    }

    fn commit(&mut self, text: &str) {
        self.committed.push_str(text);
        self.committed_chars += text.chars().count();
    }

    /// Byte index of character `chars` of `committed`, walking from the last known position.
    fn committed_byte_at(&mut self, chars: usize) -> usize {
        let (hint_chars, hint_bytes) = if self.offset_hint.0 <= chars {
            self.offset_hint
        } else {
            (0, 0)
        };
        let byte = hint_bytes
            + self.committed[hint_bytes..]
                .char_indices()
                .nth(chars - hint_chars)
                .map_or(self.committed.len() - hint_bytes, |(i, _)| i);
        self.offset_hint = (chars, byte);
        byte
    }

    fn flush_spm(&mut self, force: bool) {
        let (State::Spm(unflushed), Kind::Spm { trim_space }) =
            (&mut self.state, self.tables.kind())
        else {
            return;
        };
        let replaced = replace_metaspace(unflushed);
        let text = String::from_utf8_lossy(&replaced);
        if !force && text.ends_with('\u{fffd}') {
            return;
        }
        let text = if self.committed.is_empty() && trim_space {
            text.strip_prefix(' ').unwrap_or(&text).to_string()
        } else {
            text.into_owned()
        };
        unflushed.clear();
        self.commit(&text);
    }

    /// mlx-lm's `_maybe_trim_space`: only the very first text loses its leading space.
    fn push_trimmed_bpe(&mut self, text: &str) {
        let text = if self.committed.is_empty() {
            text.strip_prefix(' ').unwrap_or(text)
        } else {
            text
        };
        self.commit(text);
    }
}

/// `bytes.replace("▁".encode(), b" ")`, as mlx-lm's SPM detokenizer does before decoding.
fn replace_metaspace(bytes: &[u8]) -> Vec<u8> {
    const SEP: &[u8] = "\u{2581}".as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(SEP) {
            out.push(b' ');
            i += SEP.len();
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests;
