//! The World tokenizer gives exactly the official ids (fixture from the `rwkv` pip package's
//! `TRIE_TOKENIZER`, made by `tools/tokenizer/make_fixture.py`), decoding inverts encoding,
//! malformed vocabularies are errors, and the UTF-8 stream emits only complete text.

use std::path::Path;
use std::time::Instant;
use tokenshift::tokenizer::{
    ByteTokenizer, Tokenizer, Utf8Stream, WorldTokenizer, MAX_TOKEN_BYTES,
};
use tokenshift::Error;

struct Case {
    label: String,
    input: Vec<u8>,
    ids: Vec<u32>,
}

fn unhex(hex: &str) -> Vec<u8> {
    assert!(hex.len().is_multiple_of(2), "odd hex length");
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex digit"))
        .collect()
}

fn cases() -> Vec<Case> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer/cases.txt");
    let text = std::fs::read_to_string(path).expect("fixture exists");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            assert_eq!(fields.len(), 3, "fixture line `{line}`");
            let ids = if fields[2].is_empty() {
                Vec::new()
            } else {
                fields[2]
                    .split(',')
                    .map(|x| x.parse().expect("id"))
                    .collect()
            };
            Case {
                label: fields[0].to_string(),
                input: unhex(fields[1]),
                ids,
            }
        })
        .collect()
}

/// A vocabulary of the 256 single bytes (`id = byte + 1`, as `b'\xNN'` lines), then `extra`.
fn byte_vocab(extra: &str) -> String {
    let mut text: String = (0..256)
        .map(|b| format!("{} b'\\x{b:02x}' 1\n", b + 1))
        .collect();
    text.push_str(extra);
    text
}

#[test]
fn every_fixture_case_gives_the_official_ids_and_decodes_back() {
    let tok = WorldTokenizer::world();
    let cases = cases();
    assert!(cases.len() >= 590, "only {} cases", cases.len());
    for case in &cases {
        let ids = tok.encode_bytes(&case.input);
        assert_eq!(ids, case.ids, "case `{}`", case.label);
        assert_eq!(
            tok.decode(&ids).unwrap(),
            case.input,
            "case `{}`",
            case.label
        );
        if let Ok(text) = std::str::from_utf8(&case.input) {
            assert_eq!(tok.encode(text), case.ids, "case `{}`", case.label);
        }
    }
}

#[test]
fn encoding_through_the_trait_appends_and_agrees() {
    let tok = WorldTokenizer::world();
    let dyn_tok: &dyn Tokenizer = tok;
    let mut out = vec![7u32];
    for case in cases().iter().take(50) {
        out.truncate(1);
        dyn_tok.encode_bytes_into(&case.input, &mut out);
        assert_eq!(out[0], 7);
        assert_eq!(&out[1..], &case.ids[..], "case `{}`", case.label);
        assert_eq!(dyn_tok.decode(&case.ids).unwrap(), case.input);
    }
}

#[test]
fn the_shipped_vocabulary_has_the_documented_shape() {
    let tok = WorldTokenizer::world();
    assert_eq!(tok.vocab_size(), 65530);
    assert_eq!(tok.token_bytes(0).unwrap(), b"");
    for b in 0..=255u8 {
        assert_eq!(tok.token_bytes(u32::from(b) + 1).unwrap(), [b]);
    }
    assert_eq!(tok.token_bytes(261).unwrap(), b"\n\n");
    assert_eq!(tok.token_bytes(65529).unwrap(), [b' '; 128]);
    assert_eq!(tok.token_id(b"\n\n"), Some(261));
    assert_eq!(tok.token_id(b""), None);
    assert_eq!(tok.token_id(b"\xff\xff\xff\xff"), None);
}

#[test]
fn every_token_alone_encodes_to_itself() {
    let tok = WorldTokenizer::world();
    for id in 1..tok.vocab_size() as u32 {
        let bytes = tok.token_bytes(id).unwrap();
        assert_eq!(tok.encode_bytes(bytes), [id], "token {id} = {bytes:?}");
        assert_eq!(tok.token_id(bytes), Some(id));
    }
}

#[test]
fn reading_the_file_equals_the_embedded_vocabulary_and_lf_equals_crlf() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/vocab/rwkv_vocab_v20230424.txt");
    let from_file = WorldTokenizer::from_file(&path).unwrap();
    let raw = std::fs::read_to_string(&path).unwrap();
    assert!(raw.contains("\r\n"), "the official file has CRLF line ends");
    let lf = WorldTokenizer::from_vocab_str(&raw.replace("\r\n", "\n")).unwrap();
    let world = WorldTokenizer::world();
    for tok in [&from_file, &lf] {
        assert_eq!(tok.vocab_size(), world.vocab_size());
        for id in 0..world.vocab_size() as u32 {
            assert_eq!(tok.token_bytes(id).unwrap(), world.token_bytes(id).unwrap());
        }
    }
    let missing = WorldTokenizer::from_file("/nonexistent/vocab.txt").unwrap_err();
    assert!(matches!(missing, Error::Io { .. }), "{missing}");
}

#[test]
fn decoding_an_unknown_id_names_the_id_and_the_vocabulary_size() {
    let tok = WorldTokenizer::world();
    let err = tok.decode(&[33155, 65530]).unwrap_err();
    assert!(
        matches!(
            err,
            Error::TokenOutOfRange {
                token: 65530,
                vocab: 65530
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("65530"), "{msg}");
    let mut out = b"kept".to_vec();
    assert!(tok.decode_into(&[66, u32::MAX], &mut out).is_err());
    assert_eq!(out, b"kept", "a failed decode leaves the buffer as it was");
}

#[test]
fn the_end_of_text_id_decodes_to_nothing_and_is_never_produced() {
    let tok = WorldTokenizer::world();
    assert_eq!(tok.decode(&[0, 66, 0, 0, 67]).unwrap(), b"AB");
    for case in cases() {
        assert!(!case.ids.contains(&0));
    }
}

#[test]
fn python_escapes_decode_as_python_does() {
    let table: &[(&str, &[u8])] = &[
        (r"'\a\b\f\v'", b"\x07\x08\x0c\x0b"),
        (r"'\n\r\t\\'", b"\n\r\t\\"),
        (r#"'\'\"'"#, b"'\""),
        (r#""''""#, b"''"),
        (r#"" \" ""#, b" \" "),
        (r"'\101\0\7'", b"A\x00\x07"),
        (r"'\x41\xe9'", "Aé".as_bytes()),
        (r"b'\x41\xe9'", b"A\xe9"),
        (r"'\u00e9\u4e2d'", "é中".as_bytes()),
        (r"'\U0001F600'", "😀".as_bytes()),
        (r"'é中😀'", "é中😀".as_bytes()),
        (r"'\q\ '", b"\\q\\ "),
        (r"b'\u00e9'", b"\\u00e9"),
        (r"b'\N'", b"\\N"),
        (r"u'x y'", b"x y"),
        (r"B'\xff\xfe'", b"\xff\xfe"),
        (r"'\777'", "\u{1ff}".as_bytes()),
    ];
    for (literal, bytes) in table {
        let vocab = byte_vocab(&format!("257 {literal} {}\n", bytes.len()));
        let tok =
            WorldTokenizer::from_vocab_str(&vocab).unwrap_or_else(|e| panic!("{literal}: {e}"));
        assert_eq!(tok.token_bytes(257).unwrap(), *bytes, "{literal}");
    }
}

#[test]
fn malformed_vocabularies_are_errors_that_name_the_line() {
    // (extra lines after the 256 byte tokens, text the message must contain)
    let table: &[(&str, &str)] = &[
        ("257 'ab'\n", "line 257"),
        ("257\n", "line 257"),
        ("x 'ab' 2\n", "bad id"),
        ("-1 'ab' 2\n", "bad id"),
        ("0 'ab' 2\n", "reserved"),
        ("257 'ab' two\n", "bad byte length"),
        ("257 'ab' 3\n", "length column says 3"),
        ("257 'é' 1\n", "length column says 1"),
        ("257 'ab 2\n", "unterminated"),
        ("257 ab 2\n", "not a quoted"),
        ("257 'a'b' 3\n", "unescaped"),
        ("257 'a\\' 2\n", "ends inside an escape"),
        ("257 '\\x4' 1\n", "truncated"),
        ("257 '\\xzz' 1\n", "truncated"),
        ("257 '\\u12' 1\n", "truncated"),
        ("257 '\\ud800' 3\n", "not a Unicode scalar"),
        ("257 '\\U00110000' 4\n", "not a Unicode scalar"),
        ("257 b'\\777' 1\n", "not a byte"),
        ("257 b'é' 2\n", "non-ASCII"),
        ("257 r'ab' 2\n", "prefix"),
        ("257 '\\N{BULLET}' 3\n", "\\N"),
        ("257 '''ab''' 2\n", "triple"),
        ("257 '' 0\n", "empty token"),
        ("257 'ab' 99999999999\n", "bad byte length"),
        (
            "257 'ab' 2\n257 'cd' 2\n",
            "line 258: id 257 was already given on line 257",
        ),
        (
            "257 'ab' 2\n258 'ab' 2\n",
            "line 258: token 258 has the same bytes as token 257",
        ),
        ("258 'ab' 2\n", "id 257 is missing"),
        ("257 'ab' 2\n4000000000 'cd' 2\n", "id 258 is missing"),
        ("257 b'A' 1\n", "same bytes as token 66"),
    ];
    for (extra, needle) in table {
        let vocab = byte_vocab(extra);
        match WorldTokenizer::from_vocab_str(&vocab) {
            Ok(_) => panic!("accepted {extra:?}"),
            Err(e) => {
                assert!(matches!(e, Error::Vocab(_)), "{extra:?}: {e:?}");
                let msg = e.to_string();
                assert!(msg.contains(needle), "{extra:?}: `{msg}` lacks `{needle}`");
            }
        }
    }
}

#[test]
fn structural_vocabulary_errors() {
    let err = WorldTokenizer::from_vocab_str("").unwrap_err();
    assert!(err.to_string().contains("no tokens"), "{err}");
    // Byte 0xff missing: not every input would be encodable.
    let without_ff: String = (0..255)
        .map(|b| format!("{} b'\\x{b:02x}' 1\n", b + 1))
        .collect();
    let err = WorldTokenizer::from_vocab_str(&without_ff).unwrap_err();
    assert!(err.to_string().contains("0xff"), "{err}");
    // A line that is not UTF-8.
    let mut bytes = byte_vocab("").into_bytes();
    bytes.extend_from_slice(b"257 '\xff\xfe' 2\n");
    let err = WorldTokenizer::from_vocab_bytes(&bytes).unwrap_err();
    assert!(
        err.to_string().contains("line 257: not valid UTF-8"),
        "{err}"
    );
}

/// A vocabulary of the bytes plus one `a…ab` token of `len` bytes: the input `a…a` walks the
/// whole token from every position and matches one byte each time, greedy matching's worst case.
fn long_token_vocab(len: usize) -> String {
    let token = format!("{}b", "a".repeat(len - 1));
    byte_vocab(&format!("257 '{token}' {len}\n"))
}

#[test]
fn tokens_longer_than_the_limit_are_refused() {
    let tok = WorldTokenizer::from_vocab_str(&long_token_vocab(MAX_TOKEN_BYTES)).unwrap();
    let longest = format!("{}b", "a".repeat(MAX_TOKEN_BYTES - 1));
    assert_eq!(tok.encode(&longest), [257]);
    let err = WorldTokenizer::from_vocab_str(&long_token_vocab(MAX_TOKEN_BYTES + 1)).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("line 257") && message.contains(&MAX_TOKEN_BYTES.to_string()),
        "{message}"
    );
}

/// Encoding time on greedy matching's worst case at the token-length limit (not a correctness
/// test): 1 MiB of `a` against a vocabulary whose longest token is `a…ab` of the limit's length.
///
/// `cargo test --release --test tokenizer -- --ignored --nocapture worst_case_encode_time`
#[test]
#[ignore]
fn worst_case_encode_time() {
    let tok = WorldTokenizer::from_vocab_str(&long_token_vocab(MAX_TOKEN_BYTES)).unwrap();
    let data = vec![b'a'; 1 << 20];
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let t = Instant::now();
        let ids = tok.encode_bytes(&data);
        best = best.min(t.elapsed().as_secs_f64());
        assert_eq!(ids.len(), data.len());
    }
    println!("worst case at {MAX_TOKEN_BYTES} bytes: 1 MiB encoded in {best:.3} s");
}

#[test]
fn arbitrary_vocabulary_bytes_never_panic() {
    let mut state = 0x1234_5678_9abc_def0u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let alphabet = b"0123456789 'b\\xuU\"\n\r\t\xc3\xa9abcdef";
    let base = byte_vocab("");
    for _ in 0..2000 {
        let len = (next() % 40) as usize;
        let tail: Vec<u8> = (0..len)
            .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
            .collect();
        let mut bytes = base.clone().into_bytes();
        bytes.extend_from_slice(b"257 ");
        bytes.extend_from_slice(&tail);
        let _ = WorldTokenizer::from_vocab_bytes(&bytes);
        let _ = WorldTokenizer::from_vocab_bytes(&tail);
    }
}

#[test]
fn greedy_longest_match_on_a_small_vocabulary() {
    let vocab = byte_vocab("257 'ab' 2\n258 'abc' 3\n259 'abcde' 5\n260 'bcd' 3\n");
    let tok = WorldTokenizer::from_vocab_str(&vocab).unwrap();
    let a = |c: u8| u32::from(c) + 1;
    // Longest match at each position, no backtracking: "abcd" = "abc" + "d", not "a" + "bcd".
    assert_eq!(tok.encode("abcd"), [258, a(b'd')]);
    assert_eq!(tok.encode("abcde"), [259]);
    assert_eq!(tok.encode("abcdf"), [258, a(b'd'), a(b'f')]);
    assert_eq!(tok.encode("xbcdab"), [a(b'x'), 260, 257]);
    assert_eq!(tok.encode("a"), [a(b'a')]);
    assert_eq!(tok.encode(""), Vec::<u32>::new());
    assert_eq!(tok.vocab_size(), 261);
}

#[test]
fn byte_tokenizer_uses_the_world_ids_for_single_bytes() {
    let tok = ByteTokenizer;
    let world = WorldTokenizer::world();
    assert_eq!(tok.vocab_size(), 257);
    let all: Vec<u8> = (0..=255).collect();
    let ids = tok.encode_bytes(&all);
    assert_eq!(ids, (1..=256).collect::<Vec<u32>>());
    for &id in &ids {
        assert_eq!(tok.token_bytes(id).unwrap(), world.token_bytes(id).unwrap());
    }
    assert_eq!(tok.decode(&ids).unwrap(), all);
    assert_eq!(tok.decode(&[0]).unwrap(), b"");
    let err = tok.decode(&[257]).unwrap_err();
    assert!(
        matches!(
            err,
            Error::TokenOutOfRange {
                token: 257,
                vocab: 257
            }
        ),
        "{err:?}"
    );
    assert_eq!(tok.encode("é"), [0xc3 + 1, 0xa9 + 1]);
}

/// Pushes `bytes` split at `cuts` and returns each push's output, then `finish`'s.
fn stream(bytes: &[u8], cuts: &[usize]) -> Vec<String> {
    let mut s = Utf8Stream::new();
    let mut out = Vec::new();
    let mut start = 0;
    for &cut in cuts.iter().chain(std::iter::once(&bytes.len())) {
        out.push(s.push(&bytes[start..cut]));
        start = cut;
    }
    out.push(s.finish());
    out
}

#[test]
fn utf8_stream_holds_back_split_characters() {
    // An emoji whose 4 bytes arrive as 4 byte tokens (ByteTokenizer ids).
    let tok = ByteTokenizer;
    let mut s = Utf8Stream::new();
    let mut outs = Vec::new();
    for id in tok.encode("😀") {
        outs.push(s.push(tok.token_bytes(id).unwrap()));
    }
    assert_eq!(outs, ["", "", "", "😀"]);
    assert_eq!(s.finish(), "");

    // A CJK character split 2 + 1, then 1 + 2, around ASCII.
    let zhong = "中".as_bytes();
    assert_eq!(
        stream(&[b"a", zhong, b"b"].concat(), &[3]),
        ["a", "中b", ""]
    );
    assert_eq!(stream(zhong, &[1]), ["", "中", ""]);
    assert_eq!(stream("x中中".as_bytes(), &[2, 5]), ["x", "中", "中", ""]);
}

#[test]
fn utf8_stream_replaces_invalid_bytes_once_certain() {
    // A lone continuation byte is invalid at once.
    assert_eq!(stream(b"a\x80b", &[2]), ["a\u{FFFD}", "b", ""]);
    // A lead byte followed by a non-continuation is invalid when the second byte arrives.
    assert_eq!(stream(b"\xe4x", &[1]), ["", "\u{FFFD}x", ""]);
    // An incomplete sequence at the end becomes one U+FFFD at finish.
    assert_eq!(stream(b"ok\xf0\x9f\x98", &[3]), ["ok", "", "\u{FFFD}"]);
    // Bytes that can never start UTF-8.
    assert_eq!(
        stream(b"\xff\xc0\xf5", &[]),
        ["\u{FFFD}\u{FFFD}\u{FFFD}", ""]
    );
    // A surrogate encoding is three maximal invalid parts, as in `from_utf8_lossy`.
    assert_eq!(
        stream(b"\xed\xa0\x80", &[1, 2]).concat(),
        String::from_utf8_lossy(b"\xed\xa0\x80")
    );
    let mut s = Utf8Stream::new();
    assert_eq!(s.push(b"\xe6\x97"), "");
    assert_eq!(s.pending(), b"\xe6\x97");
    assert_eq!(s.finish(), "\u{FFFD}");
    assert_eq!(s.pending(), b"");
    assert_eq!(s.push("é".as_bytes()), "é", "finish resets the stream");
}

#[test]
fn utf8_stream_equals_lossy_decoding_for_any_split() {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let tok = WorldTokenizer::world();
    for case in cases() {
        let expected = String::from_utf8_lossy(&case.input).into_owned();
        // Split at token boundaries, as generation does.
        let mut s = Utf8Stream::new();
        let mut text = String::new();
        for &id in &case.ids {
            s.push_into(tok.token_bytes(id).unwrap(), &mut text);
        }
        text += &s.finish();
        assert_eq!(text, expected, "case `{}`", case.label);
        // And at random byte positions.
        for _ in 0..5 {
            let n = case.input.len();
            let mut cuts: Vec<usize> = (0..(next() % 6))
                .map(|_| (next() % (n as u64 + 1)) as usize)
                .collect();
            cuts.sort();
            assert_eq!(
                stream(&case.input, &cuts).concat(),
                expected,
                "case `{}`",
                case.label
            );
        }
    }
}

/// Throughput of `encode_bytes` (not a correctness test). Text: the file named by
/// `TOKENSHIFT_TOKENIZER_TEXT`, else this crate's sources, docs and the vocabulary file itself,
/// repeated to at least 16 MB.
///
/// `cargo test --release --test tokenizer -- --ignored --nocapture encode_throughput`
#[test]
#[ignore]
fn encode_throughput() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = match std::env::var_os("TOKENSHIFT_TOKENIZER_TEXT").filter(|p| !p.is_empty()) {
        Some(path) => std::fs::read(path).expect("readable text file"),
        None => {
            let mut text = Vec::new();
            let mut dirs = vec![root.join("src"), root.join("tests"), root.join("assets")];
            while let Some(dir) = dirs.pop() {
                for entry in std::fs::read_dir(dir).unwrap() {
                    let path = entry.unwrap().path();
                    if path.is_dir() {
                        dirs.push(path);
                    } else if matches!(
                        path.extension().and_then(|e| e.to_str()),
                        Some("rs" | "md" | "txt")
                    ) {
                        text.extend(std::fs::read(&path).unwrap());
                    }
                }
            }
            text
        }
    };
    assert!(!text.is_empty(), "no text to encode");
    let mut data = text.clone();
    while data.len() < 16 << 20 {
        data.extend_from_slice(&text);
    }
    let tok = WorldTokenizer::world();
    let mut ids = Vec::with_capacity(data.len());
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        ids.clear();
        let t = Instant::now();
        tok.encode_bytes_into(&data, &mut ids);
        best = best.min(t.elapsed().as_secs_f64());
    }
    let mb = data.len() as f64 / 1e6;
    println!(
        "encode: {mb:.1} MB -> {} tokens ({:.2} bytes/token), best of 5: {:.1} MB/s",
        ids.len(),
        data.len() as f64 / ids.len() as f64,
        mb / best
    );
    assert_eq!(tok.decode(&ids).unwrap(), data);
}
