use super::*;

/// A WordLevel tokenizer over `vocab` with the given decoder JSON.
fn tokenizer_json(vocab: &[&str], decoder: &str) -> String {
    let entries: Vec<String> = vocab
        .iter()
        .enumerate()
        .map(|(i, t)| format!("{}: {i}", serde_json::to_string(t).unwrap()))
        .collect();
    format!(
        r#"{{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": null, "post_processor": null,
        "decoder": {decoder},
        "model": {{"type": "WordLevel", "vocab": {{{}}}, "unk_token": "{}"}}}}"#,
        entries.join(", "),
        vocab[0]
    )
}

fn detokenizer(vocab: &[&str], decoder: &str, kind: Kind) -> Detokenizer {
    let tables = Tables::new(&tokenizer_json(vocab, decoder), kind).unwrap();
    Detokenizer::new(Arc::new(tables))
}

/// Feeds `ids`, reading `last_segment` after each, and returns the segments.
fn segments(d: &mut Detokenizer, ids: &[u32]) -> Vec<String> {
    let mut out: Vec<String> = ids
        .iter()
        .map(|&id| {
            d.add_token(id).unwrap();
            d.last_segment()
        })
        .collect();
    d.finalize();
    out.push(d.last_segment());
    out
}

const BYTE_LEVEL: &str =
    r#"{"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true}"#;

#[test]
fn bpe_holds_incomplete_characters_and_trims_the_first_space() {
    // "中" is E4 B8 AD: in GPT-2's alphabet "ä", "¸", "Ń" (0xAD is shifted).
    let vocab = ["<unk>", "\u{120}hi", "ä", "¸", "\u{143}", "\u{120}"];
    let mut d = detokenizer(&vocab, BYTE_LEVEL, Kind::Bpe);
    let got = segments(&mut d, &[1, 2, 3, 4, 5, 1]);
    // The lone space is held until the next token, then both come out.
    assert_eq!(got, ["hi", "", "", "中", "", "  hi", ""]);
    assert_eq!(d.text(), "hi中  hi");
}

#[test]
fn spm_replaces_metaspace_and_decodes_byte_tokens() {
    let vocab = ["<unk>", "\u{2581}a", "<0xE4>", "<0xB8>", "<0xAD>", "b"];
    let decoder = r#"{"type": "Fuse"}"#;
    let mut d = detokenizer(&vocab, decoder, Kind::Spm { trim_space: true });
    assert_eq!(
        segments(&mut d, &[1, 2, 3, 4, 5]),
        ["a", "", "", "中", "b", ""]
    );
    let mut d = detokenizer(&vocab, decoder, Kind::Spm { trim_space: false });
    assert_eq!(segments(&mut d, &[1, 5]), [" a", "b", ""]);
}

#[test]
fn naive_matches_whole_line_decoding_with_clean_up() {
    let vocab = [
        "[UNK]", "don", "##'", "##t", "stop", ",", ".", "'", "s", "n't", "\n", "go",
    ];
    let decoder = r###"{"type": "WordPiece", "prefix": "##", "cleanup": false}"###;
    let kind = Kind::Naive {
        trim_trailing_space: true,
        clean_up_spaces: true,
    };
    let mut d = detokenizer(&vocab, decoder, kind);
    let mut seed = 7u64;
    let ids: Vec<u32> = (0..400)
        .map(|_| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) % vocab.len() as u64) as u32
        })
        .collect();
    segments(&mut d, &ids);
    // Segments need not add up to the text: clean-up rewrites text already handed out, as in
    // mlx-lm. Line by line, the text is the clean-up of each line's decode.
    let tables = Tables::new(&tokenizer_json(&vocab, decoder), kind).unwrap();
    let mut expected = String::new();
    for line in ids.split_inclusive(|&id| id == 10) {
        expected.push_str(&naive_clean_up(&tables.decode(line)));
    }
    assert_eq!(d.text(), expected);
}

fn naive_clean_up(text: &str) -> String {
    text.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
}

#[test]
fn reset_and_offset_follow_mlx_lm() {
    let vocab = ["<unk>", "\u{120}hi", "\u{120}there"];
    let mut d = detokenizer(&vocab, BYTE_LEVEL, Kind::Bpe);
    d.add_token(1).unwrap();
    d.add_token(2).unwrap();
    assert_eq!(d.last_segment(), "hi there");
    d.set_offset(3);
    assert_eq!(d.last_segment(), "there");
    assert_eq!(d.offset(), 8);
    d.reset();
    assert_eq!(
        (d.text(), d.tokens().len(), d.offset()),
        (String::new(), 0, 0)
    );
}
