//! mlx-lm's `NaiveStreamingDetokenizer` keeps `tokenizer.decode(line)` for the current line
//! and decodes the whole line again on every token. This one decodes a window of the last
//! few tokens instead (the way `tokenizers`' `DecodeStream` does) and only falls back to the
//! whole line when the window's text is not a continuation of what it had.

use super::tables::{Kind, Tables};

#[derive(Clone, Default)]
pub(super) struct NaiveLine {
    /// Whether `tokenizer.decode` applies transformers' `clean_up_tokenization`.
    clean_up_spaces: bool,
    ids: Vec<u32>,
    /// `ids.len()` at the last refresh; decoding is a pure function of the ids.
    refreshed: usize,
    /// `decode(ids)` before clean-up; `raw[..raw_fixed]` no longer changes within the line.
    raw: String,
    raw_fixed: usize,
    /// Window of ids that gives the context for the next decode: `window_text` is
    /// `decode(ids[window_start..window_read])`, and `ids[..window_read]` decodes to
    /// `raw[..raw_fixed]`.
    window_start: usize,
    window_read: usize,
    window_text: String,
    /// transformers' `clean_up_tokenization(raw)`; `clean[..clean_split]` is the clean-up of
    /// `raw[..raw_split]`, a split no replacement reaches across.
    clean: String,
    raw_split: usize,
    clean_split: usize,
    /// `raw[..split_scanned]` has been searched for clean-up splits.
    split_scanned: usize,
    /// Length of the line text that no longer changes, in (bytes, chars).
    fixed: (usize, usize),
    /// A (chars, bytes) position inside the fixed text, where the last segment started.
    segment_hint: (usize, usize),
    /// mlx-lm's `_current_text`: the line text with a trailing incomplete character (or a
    /// trailing space, with `_clean_spaces`) trimmed; a prefix of the line text.
    current_end: usize,
    current_chars: usize,
}

/// transformers' `clean_up_tokenization`, replacement by replacement (each only where its
/// pattern occurs, which is rarely, so most calls copy nothing).
fn clean_up_tokenization(text: &str) -> String {
    const REPLACEMENTS: [(&str, &str); 10] = [
        (" .", "."),
        (" ?", "?"),
        (" !", "!"),
        (" ,", ","),
        (" ' ", "'"),
        (" n't", "n't"),
        (" 'm", "'m"),
        (" 's", "'s"),
        (" 've", "'ve"),
        (" 're", "'re"),
    ];
    let mut text = std::borrow::Cow::Borrowed(text);
    for (pattern, replacement) in REPLACEMENTS {
        if text.contains(pattern) {
            text = std::borrow::Cow::Owned(text.replace(pattern, replacement));
        }
    }
    text.into_owned()
}

/// Whether `clean_up_tokenization(a + b) == clean_up_tokenization(a) + clean_up_tokenization(b)`
/// for `a = text[..at]`: every pattern starts with a space, and only " ' " has another space,
/// so a split just before a space is safe when neither side can start or end a match there.
fn is_clean_up_split(text: &[u8], at: usize) -> bool {
    at >= 1
        && at + 1 < text.len()
        && text[at] == b' '
        && !matches!(text[at - 1], b' ' | b'\'')
        && !matches!(
            text[at + 1],
            b' ' | b'.' | b'?' | b'!' | b',' | b'\'' | b'n'
        )
}

impl NaiveLine {
    pub(super) fn new(clean_up_spaces: bool) -> Self {
        NaiveLine {
            clean_up_spaces,
            ..NaiveLine::default()
        }
    }

    /// Starts the next line.
    pub(super) fn clear(&mut self) {
        *self = NaiveLine::new(self.clean_up_spaces);
    }

    pub(super) fn push(&mut self, id: u32) {
        self.ids.push(id);
    }

    pub(super) fn current(&self) -> &str {
        &self.text()[..self.current_end]
    }

    pub(super) fn current_chars(&self) -> usize {
        self.current_chars
    }

    /// `current()[chars..]`, or "" past its end. Walks from the nearest known position at or
    /// before `chars`, so reading segments along a long line stays linear overall.
    pub(super) fn current_from_char(&mut self, chars: usize) -> &str {
        let mut from = (0, 0);
        for known in [self.segment_hint, (self.fixed.1, self.fixed.0)] {
            if known.0 <= chars && known.1 <= self.current_end && known.0 >= from.0 {
                from = known;
            }
        }
        let current = &self.text()[..self.current_end];
        let Some((i, _)) = current[from.1..].char_indices().nth(chars - from.0) else {
            return "";
        };
        let byte = from.1 + i;
        if byte <= self.fixed.0 {
            self.segment_hint = (chars, byte);
        }
        &self.text()[byte..self.current_end]
    }

    /// The whole line's `tokenizer.decode`, as mlx-lm's `finalize` appends it.
    pub(super) fn finish(&mut self, tables: &Tables) -> String {
        if self.ids.is_empty() {
            return String::new();
        }
        self.refresh(tables);
        let text = self.text().to_string();
        self.clear();
        text
    }

    fn text(&self) -> &str {
        if self.clean_up_spaces {
            &self.clean
        } else {
            &self.raw
        }
    }

    pub(super) fn refresh(&mut self, tables: &Tables) {
        if self.ids.len() == self.refreshed {
            return;
        }
        self.refreshed = self.ids.len();
        let Kind::Naive {
            trim_trailing_space,
            ..
        } = tables.kind()
        else {
            return;
        };
        self.refresh_raw(tables);
        let fixed_end = if self.clean_up_spaces {
            self.refresh_clean();
            self.clean_split
        } else {
            self.raw_fixed
        };
        let text = if self.clean_up_spaces {
            &self.clean
        } else {
            &self.raw
        };
        if fixed_end > self.fixed.0 {
            self.fixed.1 += text[self.fixed.0..fixed_end].chars().count();
            self.fixed.0 = fixed_end;
        }
        self.current_end = if text.ends_with('\u{fffd}') {
            text.trim_end_matches('\u{fffd}').len()
        } else if trim_trailing_space && text.ends_with(' ') {
            text.len() - 1
        } else {
            text.len()
        };
        // Trimming only drops a short suffix, which may reach back into the fixed text.
        self.current_chars = if self.current_end >= self.fixed.0 {
            self.fixed.1 + text[self.fixed.0..self.current_end].chars().count()
        } else {
            self.fixed.1 - text[self.current_end..self.fixed.0].chars().count()
        };
    }

    fn refresh_raw(&mut self, tables: &Tables) {
        let n = self.ids.len();
        let mut window = tables.decode(&self.ids[self.window_start..]);
        if !window.starts_with(&self.window_text) {
            // The decoder looked further back than the window: decode the whole line again.
            let ids = std::mem::take(&mut self.ids);
            *self = NaiveLine {
                ids,
                refreshed: n,
                ..NaiveLine::new(self.clean_up_spaces)
            };
            window = tables.decode(&self.ids);
        }
        self.raw.truncate(self.raw_fixed);
        self.raw.push_str(&window[self.window_text.len()..]);
        // A trailing replacement character may still become a character, and a byte token's
        // text depends on the byte tokens after it: neither is final yet.
        let settled = window.len() > self.window_text.len()
            && !window.ends_with('\u{fffd}')
            && !tables.is_byte_token(self.ids[n - 1]);
        if settled {
            self.raw_fixed = self.raw.len();
            self.window_start = self.window_read;
            self.window_read = n;
            self.window_text = tables.decode(&self.ids[self.window_start..self.window_read]);
        }
    }

    fn refresh_clean(&mut self) {
        // A split needs the character after it fixed too, so look at raw[..raw_fixed] only,
        // from where the last search could not yet decide.
        let fixed = &self.raw.as_bytes()[..self.raw_fixed];
        let from = (self.raw_split + 1).max(self.split_scanned.saturating_sub(1));
        let split = (from..self.raw_fixed)
            .rev()
            .find(|&at| is_clean_up_split(fixed, at));
        self.split_scanned = self.raw_fixed;
        self.clean.truncate(self.clean_split);
        if let Some(split) = split {
            let cleaned = clean_up_tokenization(&self.raw[self.raw_split..split]);
            self.clean.push_str(&cleaned);
            self.raw_split = split;
            self.clean_split = self.clean.len();
        }
        let tail = clean_up_tokenization(&self.raw[self.raw_split..]);
        self.clean.push_str(&tail);
    }
}
