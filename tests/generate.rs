//! `Session`: generation is the plain loop of `Model::step` + sampling, prefill in chunks is one
//! `Model::forward`, fork/reset/save/load continue exactly, stop tokens and stop strings end
//! generation, the text stream emits whole characters only, and sessions run side by side on
//! threads.

mod common;

use common::{fixture, fixtures, load_model, max_abs_diff, max_abs_diff_list};
use ndarray::Array1;
use std::path::Path;
use std::sync::Arc;
use tokenshift::sample::argmax;
use tokenshift::{
    ByteTokenizer, Error, Logits, Model, Result, Sampler, SamplerConfig, Session, StopReason,
    TextStream, Tokenizer,
};

/// A tokenizer given by its table: id `i` is `tokens[i]`. Encoding is greedy longest match
/// (bytes no token starts with are skipped); only what the tests need.
struct TableTokenizer {
    tokens: Vec<Vec<u8>>,
}

impl TableTokenizer {
    /// Ids `0..vocab`: id 0 is empty, id `i` is two letters, distinct for every id (a lower
    /// case letter, then an upper case one: "bA", "cA", ..., so "Xy" only spans two tokens).
    fn letters(vocab: usize) -> Self {
        let tokens = (0..vocab)
            .map(|i| match i {
                0 => Vec::new(),
                _ => vec![b'a' + (i % 26) as u8, b'A' + (i / 26) as u8],
            })
            .collect();
        TableTokenizer { tokens }
    }

    fn text(&self, ids: &[u32]) -> String {
        String::from_utf8(self.decode(ids).unwrap()).unwrap()
    }
}

impl Tokenizer for TableTokenizer {
    fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    fn encode_bytes_into(&self, bytes: &[u8], out: &mut Vec<u32>) {
        let mut i = 0;
        while i < bytes.len() {
            let best = (1..self.tokens.len())
                .filter(|&id| {
                    !self.tokens[id].is_empty() && bytes[i..].starts_with(&self.tokens[id])
                })
                .max_by_key(|&id| self.tokens[id].len());
            match best {
                Some(id) => {
                    out.push(id as u32);
                    i += self.tokens[id].len();
                }
                None => i += 1,
            }
        }
    }

    fn token_bytes(&self, id: u32) -> Result<&[u8]> {
        self.tokens
            .get(id as usize)
            .map(Vec::as_slice)
            .ok_or(Error::TokenOutOfRange {
                token: id,
                vocab: self.tokens.len(),
            })
    }
}

const SHIPPED: &str = "assets/models/kjv-rwkv6.safetensors";

fn shipped() -> Model {
    Model::load(Path::new(env!("CARGO_MANIFEST_DIR")).join(SHIPPED)).expect("shipped model")
}

fn greedy() -> Sampler {
    Sampler::new(SamplerConfig::greedy(), 0).unwrap()
}

fn sampled(seed: u64) -> Sampler {
    Sampler::new(SamplerConfig::default(), seed).unwrap()
}

fn with_config(config: SamplerConfig) -> Sampler {
    Sampler::new(config, 0).unwrap()
}

/// The reference loop: the prompt through one `forward`, then `n` times argmax over the first
/// `limit` logits and `step`. Returns the tokens and the logits after the last one.
fn hand_rolled_greedy(
    model: &Model,
    prompt: &[u32],
    n: usize,
    limit: usize,
) -> (Vec<u32>, Array1<f32>) {
    let mut state = model.init_state();
    let mut logits = model
        .forward(prompt, &mut state, Logits::Last)
        .unwrap()
        .row(0)
        .to_owned();
    let mut out = Vec::new();
    for _ in 0..n {
        let limit = limit.min(logits.len());
        let token = argmax(logits.slice(ndarray::s![..limit])).unwrap();
        out.push(token);
        logits = model.step(token, &mut state).unwrap();
    }
    (out, logits)
}

fn prompt(n: usize, vocab: usize) -> Vec<u32> {
    common::Rng::new(n as u64).tokens(n, vocab)
}

#[test]
fn greedy_generation_equals_the_hand_rolled_loop() {
    for dir in fixtures() {
        let model = load_model(&dir);
        let vocab = model.config().vocab;
        let prompt = prompt(9, vocab);
        let (want, want_logits) = hand_rolled_greedy(&model, &prompt, 24, vocab);
        let mut session = Session::new(&model, ByteTokenizer, greedy());
        session.prefill(&prompt).unwrap();
        let mut tokens = session.tokens(24);
        let got: Vec<u32> = tokens.by_ref().map(|t| t.unwrap()).collect();
        assert_eq!(tokens.stop_reason(), Some(StopReason::MaxTokens));
        assert_eq!(got, want, "{dir:?}");
        // After the last token the session holds the logits that predict the next one.
        assert_eq!(session.logits().unwrap(), want_logits.view(), "{dir:?}");
    }
}

#[test]
fn greedy_generation_on_the_shipped_model() {
    let model = shipped();
    let tok = ByteTokenizer;
    let prompt = tok.encode("In the beginning");
    let (want, _) = hand_rolled_greedy(&model, &prompt, 48, tok.vocab_size());
    let mut session = Session::new(Arc::new(model), tok, greedy());
    session.prefill_text("In the beginning").unwrap();
    let text = session.generate_text(48).unwrap();
    assert_eq!(text.as_bytes(), tok.decode(&want).unwrap());
    assert!(text.bytes().all(|b| b.is_ascii()), "{text:?}");
}

#[test]
fn prefill_in_chunks_equals_one_forward() {
    for dir in fixtures() {
        let model = load_model(&dir);
        let prompt = prompt(50, model.config().vocab);
        let mut state = model.init_state();
        let want = model.forward(&prompt, &mut state, Logits::Last).unwrap();
        for chunk in [1, 3, 7, 16, 50, 256] {
            let mut session =
                Session::new(&model, ByteTokenizer, greedy()).with_prefill_chunk(chunk);
            // Two calls, split inside a chunk, continue each other.
            session.prefill(&prompt[..20]).unwrap();
            session.prefill(&prompt[20..]).unwrap();
            let logits = max_abs_diff(session.logits().unwrap(), want.row(0));
            let states = max_abs_diff_list(
                &session.state().to_official_list(),
                &state.to_official_list(),
            );
            assert!(
                logits < 1e-4,
                "{dir:?} chunk {chunk}: logits differ by {logits}"
            );
            assert!(
                states < 2e-4,
                "{dir:?} chunk {chunk}: states differ by {states}"
            );
        }
    }
}

#[test]
fn fork_continues_identically() {
    let model = load_model(&fixture("v6-a"));
    let mut session = Session::new(&model, ByteTokenizer, sampled(7));
    session.prefill(&prompt(12, 128)).unwrap();
    session.generate(5).unwrap();
    let mut fork = session.fork();
    let a = fork.generate(30).unwrap();
    // The fork is independent: the original still continues from where it was.
    let b = session.generate(30).unwrap();
    assert_eq!(a, b);
    assert_eq!(fork.state(), session.state());
    assert_eq!(fork.logits(), session.logits());
    // A fork shares nothing mutable: diverging one leaves the other alone.
    let mut other = session.fork();
    other.prefill(&[1, 2, 3]).unwrap();
    assert_ne!(other.state(), session.state());
    assert_eq!(fork.generate(10).unwrap(), session.generate(10).unwrap());
}

#[test]
fn reset_equals_a_fresh_session() {
    let model = load_model(&fixture("v5.2-a"));
    let p = prompt(10, 128);
    let run = |session: &mut Session<&Model, ByteTokenizer>| {
        session.prefill(&p).unwrap();
        session.generate(25).unwrap()
    };
    let mut fresh = Session::new(&model, ByteTokenizer, sampled(3));
    let want = run(&mut fresh);

    let mut session = Session::new(&model, ByteTokenizer, sampled(3));
    session.prefill(&prompt(33, 128)).unwrap();
    session.generate(40).unwrap();
    session.reset();
    assert!(session.logits().is_none());
    assert_eq!(session.state(), &model.init_state());
    assert_eq!(run(&mut session), want);

    // With an initial state, reset returns to it.
    let mut start = model.init_state();
    model.forward(&[5, 6, 7], &mut start, Logits::Last).unwrap();
    let mut session = Session::new(&model, ByteTokenizer, sampled(3))
        .with_initial_state(start.clone())
        .unwrap();
    let first = run(&mut session);
    session.reset();
    assert_eq!(session.state(), &start);
    assert_eq!(run(&mut session), first);
}

#[test]
fn stop_token_ends_generation_unread() {
    let model = load_model(&fixture("v6-b"));
    let vocab = model.config().vocab;
    let p = prompt(7, vocab);
    let (seq, _) = hand_rolled_greedy(&model, &p, 12, vocab);
    let stop = seq[6];
    let k = seq.iter().position(|&t| t == stop).unwrap();
    let config = SamplerConfig {
        token_stop: vec![stop],
        ..SamplerConfig::greedy()
    };
    let mut session = Session::new(&model, ByteTokenizer, with_config(config));
    session.prefill(&p).unwrap();
    let mut tokens = session.tokens(100);
    let got: Vec<u32> = tokens.by_ref().map(|t| t.unwrap()).collect();
    assert_eq!(got, seq[..k]);
    assert_eq!(tokens.stop_reason(), Some(StopReason::StopToken(stop)));
    // The stop token was not read: the logits are those after seq[..k].
    let (_, after) = hand_rolled_greedy(&model, &p, k, vocab);
    assert_eq!(session.logits().unwrap(), after.view());
}

#[test]
fn stop_string_ends_generation_and_is_not_emitted() {
    let model = load_model(&fixture("v6-a"));
    let tok = TableTokenizer::letters(model.config().vocab);
    let p = prompt(5, 128);
    let (seq, _) = hand_rolled_greedy(&model, &p, 40, 128);
    let full = tok.text(&seq);
    // A stop string across the boundary of tokens 4 and 5: the last letter of one and the
    // first of the next.
    let stop = full[9..11].to_string();
    let at = full.find(&stop).unwrap();
    let needed = (at + stop.len()).div_ceil(2); // every token is two letters
    let config = SamplerConfig {
        stop_strings: vec!["never".into(), stop.clone()],
        ..SamplerConfig::greedy()
    };
    let mut session = Session::new(&model, &tok, with_config(config));
    session.prefill(&p).unwrap();
    let mut text = session.text(40);
    let pieces: Vec<String> = text.by_ref().map(|t| t.unwrap()).collect();
    assert_eq!(pieces.concat(), full[..at]);
    assert_eq!(text.stop_reason(), Some(StopReason::StopString(1)));
    assert_eq!(text.generated(), needed);
    assert!(pieces.iter().all(|p| !p.is_empty()));
    // The tokens that made the stop string were read: the session continues after them.
    let (_, after) = hand_rolled_greedy(&model, &p, needed, 128);
    assert_eq!(session.logits().unwrap(), after.view());

    // Text held back as a possible stop string is emitted when generation ends without it.
    let tail = format!("{}~", &full[full.len() - 2..]);
    let config = SamplerConfig {
        stop_strings: vec![tail],
        ..SamplerConfig::greedy()
    };
    let mut session = Session::new(&model, &tok, with_config(config));
    session.prefill(&p).unwrap();
    let mut text = session.text(40);
    let all: String = text.by_ref().map(|t| t.unwrap()).collect();
    assert_eq!(all, full);
    assert_eq!(text.stop_reason(), Some(StopReason::MaxTokens));
}

#[test]
fn text_stream_never_splits_a_character() {
    let model = load_model(&fixture("v6-a"));
    // A prompt whose first four greedy tokens are distinct, so that a table can give them
    // any bytes: "é" and "😀" cut inside both characters.
    let (p, seq) = (0..128u32)
        .map(|t| (vec![t], hand_rolled_greedy(&model, &[t], 4, 128).0))
        .find(|(_, s)| (0..4).all(|i| !s[..i].contains(&s[i])))
        .expect("some one-token prompt has four distinct greedy tokens");
    let bytes = "é😀".as_bytes();
    let chunks: [&[u8]; 4] = [&bytes[..1], &bytes[1..3], &bytes[3..5], &bytes[5..]];
    let mut tok = TableTokenizer::letters(128);
    for (&id, chunk) in seq.iter().zip(chunks) {
        tok.tokens[id as usize] = chunk.to_vec();
    }
    let mut session = Session::new(&model, &tok, greedy());
    session.prefill(&p).unwrap();
    let pieces: Vec<String> = session.text(4).map(|t| t.unwrap()).collect();
    assert_eq!(pieces, ["é", "😀"]);
}

/// Bytes pushed, stop strings, the text of each push and then of `finish`, the stop string hit.
type Case<'a> = (Vec<&'a [u8]>, Vec<&'a str>, Vec<&'a str>, Option<usize>);

#[test]
fn text_stream_table() {
    let e = "é".as_bytes();
    let smile = "😀".as_bytes();
    let cases: Vec<Case> = vec![
        (vec![&e[..1], &e[1..]], vec![], vec!["", "é", ""], None),
        (
            vec![&smile[..1], &smile[1..2], &smile[2..3], &smile[3..], b"!"],
            vec![],
            vec!["", "", "", "😀", "!", ""],
            None,
        ),
        (
            vec![b"ab\n", b"\ncd"],
            vec!["\n\n"],
            vec!["ab", "", ""],
            Some(0),
        ),
        (
            vec![b"ab\n", b"cd"],
            vec!["\n\n"],
            vec!["ab", "\ncd", ""],
            None,
        ),
        (vec![b"ab\n"], vec!["\n\n"], vec!["ab", "\n"], None),
        // A stop string made of a split character.
        (
            vec![b"x", &e[..1], &e[1..], b"y"],
            vec!["é"],
            vec!["x", "", "", "", ""],
            Some(0),
        ),
        // The earliest stop string wins, whatever its place in the list.
        (
            vec![b"one two three"],
            vec!["three", "two"],
            vec!["one ", ""],
            Some(1),
        ),
        // An incomplete character at the end becomes U+FFFD.
        (
            vec![b"a", &smile[..2]],
            vec![],
            vec!["a", "", "\u{FFFD}"],
            None,
        ),
        // Nothing after a stop.
        (vec![b"a.b", b"cd"], vec!["."], vec!["a", "", ""], Some(0)),
    ];
    for (pushes, stops, want, stopped) in cases {
        let mut stream = TextStream::new(&stops);
        let mut got: Vec<String> = pushes.iter().map(|b| stream.push(b)).collect();
        got.push(stream.finish());
        assert_eq!(got, want, "pushes {pushes:?}, stops {stops:?}");
        assert_eq!(
            stream.stopped(),
            stopped,
            "pushes {pushes:?}, stops {stops:?}"
        );
    }

    // Byte tokens of mixed text, cut at every possible place into three: the pieces are
    // whole characters and add up to the text.
    let text = "aé😀b日";
    let ids = ByteTokenizer.encode(text);
    for i in 0..=ids.len() {
        for j in i..=ids.len() {
            let mut stream = TextStream::new(&["\n\n"]);
            let mut out = String::new();
            for part in [&ids[..i], &ids[i..j], &ids[j..]] {
                out += &stream.push(&ByteTokenizer.decode(part).unwrap());
            }
            out += &stream.finish();
            assert_eq!(out, text, "cut at {i}, {j}");
        }
    }
}

#[test]
fn sessions_run_side_by_side_on_threads() {
    fn assert_send<S: Send>() {}
    assert_send::<Session<&Model, &tokenshift::WorldTokenizer>>();
    assert_send::<Session<Arc<Model>, &(dyn Tokenizer + Sync)>>();

    let model = load_model(&fixture("v6-b"));
    let run = |seed: u64, model: &Model| {
        let mut session = Session::new(model, ByteTokenizer, sampled(seed));
        session.prefill(&prompt(5 + seed as usize, 101)).unwrap();
        session.generate(32).unwrap()
    };
    let want: Vec<Vec<u32>> = (0..4).map(|seed| run(seed, &model)).collect();
    let got: Vec<Vec<u32>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|seed| {
                let model = &model;
                s.spawn(move || run(seed, model))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(got, want);

    // An `Arc<Model>` session can move to a thread of its own.
    let shared = Arc::new(model);
    let mut session = Session::new(Arc::clone(&shared), ByteTokenizer, sampled(2));
    session.prefill(&prompt(7, 101)).unwrap();
    let moved = std::thread::spawn(move || session.generate(32).unwrap());
    assert_eq!(moved.join().unwrap(), want[2]);
}

#[test]
fn saved_state_continues_like_an_uninterrupted_run() {
    let model = shipped();
    let tok = ByteTokenizer;
    let (first, second) = ("And it came to pass", "\nAnd God said");
    let mut whole = Session::new(&model, tok, greedy());
    whole.prefill_text(first).unwrap();
    let a1 = whole.generate(20).unwrap();
    whole.prefill_text(second).unwrap();
    let a2 = whole.generate(20).unwrap();

    let mut before = Session::new(&model, tok, greedy());
    before.prefill_text(first).unwrap();
    assert_eq!(before.generate(20).unwrap(), a1);
    let path = std::env::temp_dir().join(format!(
        "tokenshift-generate-{}.safetensors",
        std::process::id()
    ));
    before.state().save(&path).unwrap();
    let loaded = model.load_state(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let mut after = Session::new(&model, tok, greedy())
        .with_initial_state(loaded)
        .unwrap();
    after.prefill_text(second).unwrap();
    assert_eq!(after.generate(20).unwrap(), a2);
}

#[test]
fn only_the_tokenizers_ids_are_sampled() {
    let model = load_model(&fixture("v6-a"));
    let tok = TableTokenizer::letters(10);
    let config = SamplerConfig {
        top_p: 1.0,
        ..SamplerConfig::default()
    };
    let mut session = Session::new(&model, &tok, Sampler::new(config, 1).unwrap());
    session.prefill(&[1, 2, 3]).unwrap();
    let tokens = session.generate(200).unwrap();
    assert!(tokens.iter().all(|&t| t < 10), "{tokens:?}");

    let (want, _) = hand_rolled_greedy(&model, &[1, 2, 3], 20, 10);
    let mut session = Session::new(&model, &tok, greedy());
    session.prefill(&[1, 2, 3]).unwrap();
    assert_eq!(session.generate(20).unwrap(), want);
}

#[test]
fn bad_input_is_an_error_and_changes_nothing() {
    let model = load_model(&fixture("v6-a"));
    let mut session = Session::new(&model, ByteTokenizer, greedy());
    // Nothing to continue from.
    assert!(matches!(session.generate(3), Err(Error::EmptyPrompt)));
    assert!(matches!(
        session.text(3).next(),
        Some(Err(Error::EmptyPrompt))
    ));
    // Out-of-range ids, from tokens or from text ("é" is bytes 0xC3 0xA9: ids 196, 170).
    let err = session.prefill(&[3, 200, 4]).unwrap_err();
    assert!(
        matches!(
            err,
            Error::TokenOutOfRange {
                token: 200,
                vocab: 128
            }
        ),
        "{err}"
    );
    assert!(session.prefill_text("é").is_err());
    assert!(session.logits().is_none());
    assert_eq!(session.state(), &model.init_state());
    // An empty prompt is nothing to read.
    session.prefill(&[]).unwrap();
    assert!(session.logits().is_none());
    // A state of another model.
    let other = load_model(&fixture("v6-b"));
    let err = session.set_state(other.init_state()).unwrap_err();
    assert!(matches!(err, Error::StateMismatch(_)), "{err}");
    assert!(Session::new(&model, ByteTokenizer, greedy())
        .with_initial_state(other.init_state())
        .is_err());
    // Sampler settings that cannot work come back from the iterator, which then ends.
    let banned = SamplerConfig {
        token_ban: vec![500],
        ..SamplerConfig::greedy()
    };
    let mut session = Session::new(&model, ByteTokenizer, with_config(banned));
    session.prefill(&[1]).unwrap();
    let mut tokens = session.tokens(5);
    assert!(matches!(
        tokens.next(),
        Some(Err(Error::TokenOutOfRange { token: 500, .. }))
    ));
    assert!(tokens.next().is_none());
    let all_banned = SamplerConfig {
        token_ban: (0..128).collect(),
        ..SamplerConfig::greedy()
    };
    let mut session = Session::new(&model, ByteTokenizer, with_config(all_banned));
    session.prefill(&[1]).unwrap();
    assert!(matches!(session.generate(5), Err(Error::Sample(_))));
    // Zero tokens asked: nothing generated, nothing changed.
    let mut session = Session::new(&model, ByteTokenizer, greedy());
    session.prefill(&[1]).unwrap();
    let before = session.state().clone();
    assert_eq!(session.generate(0).unwrap(), Vec::<u32>::new());
    assert_eq!(session.state(), &before);
}
