//! Text generation: a [`Session`] ties a model, a [`State`], a [`Sampler`] and a [`Tokenizer`]
//! together and turns prompts into generated tokens or streamed text.
//!
//! A session keeps two things between calls: the state (everything the model has read so far)
//! and the logits of the next token. The loop is the official `PIPELINE.generate`:
//!
//! ```text
//! prefill(prompt):   state, ℓ ← model.forward(prompt in chunks of 256, state)   (last logits only)
//! each token:        t ← sampler.sample(ℓ)            (bans, repetition penalty, top-p/top-k, T)
//!                    if t is a stop token: stop        (t is neither emitted nor read)
//!                    ℓ ← model.step(t, state);  sampler.accept(t);  emit t
//! ```
//!
//! So after every emitted token the state has read it and the logits predict the one after it:
//! generation can be resumed, a new prompt appended with [`Session::prefill`], the session
//! [forked](Session::fork) or its [state](Session::state) saved at any point between tokens.
//!
//! [`Session::text`] streams text on top of the tokens through a [`TextStream`]: only whole
//! UTF-8 characters are emitted (tokens may split a character), and stop strings
//! ([`SamplerConfig::stop_strings`](crate::SamplerConfig::stop_strings)) end generation without
//! being emitted (text that could be the start of one is held back until it is decided).
//!
//! The model is only borrowed (`&Model`, `Arc<Model>`, anything that is [`Borrow<Model>`]), so
//! any number of sessions can run on one model at the same time, from any threads. `generate`
//! never looks inside a layer: it only calls [`Model::forward`] and [`Model::step`].
//!
//! # Example
//!
//! ```
//! use tokenshift::{ByteTokenizer, Model, Sampler, SamplerConfig, Session, SHIPPED_MODEL};
//!
//! # fn main() -> tokenshift::Result<()> {
//! let model = Model::load(SHIPPED_MODEL)?; // byte level: vocabulary of 257
//! let sampler = Sampler::new(SamplerConfig::default(), 42)?;
//! let mut session = Session::new(&model, ByteTokenizer, sampler);
//! session.prefill_text("Hello")?;
//! let mut fork = session.fork(); // same state, same random sequence
//! let a = session.generate(8)?;
//! assert_eq!(fork.generate(8)?, a);
//! for piece in session.text(8) {
//!     print!("{}", piece?); // whole characters only
//! }
//! # Ok(())
//! # }
//! ```

use crate::error::{Error, Result};
use crate::model::{Logits, Model};
use crate::sample::{find_stop_string, partial_stop_len, Sampler};
use crate::state::State;
use crate::tokenizer::{Tokenizer, Utf8Stream};
use ndarray::{s, Array1, ArrayView1, Axis};
use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

/// Prompt tokens per [`Model::forward`] call in [`Session::prefill`] (the official
/// `chunk_len`).
pub const DEFAULT_PREFILL_CHUNK: usize = 256;

/// Why a generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StopReason {
    /// The requested number of tokens was generated.
    MaxTokens,
    /// The sampler drew this stop token (it was not emitted and the model did not read it).
    StopToken(u32),
    /// The generated text completed the stop string with this index in
    /// [`SamplerConfig::stop_strings`](crate::SamplerConfig::stop_strings). The text from the
    /// stop string on was not emitted; the tokens that produced it were read by the model.
    StopString(usize),
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::MaxTokens => write!(f, "max tokens"),
            StopReason::StopToken(t) => write!(f, "stop token {t}"),
            StopReason::StopString(k) => write!(f, "stop string {k}"),
        }
    }
}

/// A generation stream over one model: the model, a tokenizer, the recurrent [`State`], the
/// [`Sampler`] and the logits of the next token.
///
/// `M` is how the model is held (`&Model`, `Arc<Model>`, ...) and `T` the tokenizer (`&T`,
/// `&dyn Tokenizer`, [`ByteTokenizer`](crate::ByteTokenizer), ...). A session never changes the
/// model, so many sessions can share one.
///
/// # Contract
///
/// - Between calls, [`state`](Session::state) has read every prompt token and every emitted
///   token, in order, and [`logits`](Session::logits) are the model's prediction after the
///   last of them (`None` before the first prompt, after [`reset`](Session::reset) and after
///   [`set_state`](Session::set_state)).
/// - Generating from a session without logits is an error ([`Error::EmptyPrompt`]).
/// - Only ids below both the model's and the tokenizer's vocabulary size are ever sampled: a
///   World model has 65 536 outputs, its vocabulary 65 530 ids, and the last six are never
///   drawn.
/// - A session is `Send` when `M` and `T` are (`&Model`, `Arc<Model>`, `&WorldTokenizer`,
///   `ByteTokenizer` all are): sessions on one model can run on as many threads as wanted.
/// - Nothing here panics on user input: bad token ids, states of another model and impossible
///   sampler settings come back as errors.
pub struct Session<M, T> {
    model: M,
    tokenizer: T,
    state: State,
    sampler: Sampler,
    logits: Option<Array1<f32>>,
    /// The state [`Session::reset`] returns to; `None` is the model's initial state.
    initial_state: Option<Arc<State>>,
    /// The sampler as given to [`Session::new`], for [`Session::reset`].
    initial_sampler: Sampler,
    prefill_chunk: usize,
}

impl<M: Borrow<Model>, T: Tokenizer> Session<M, T> {
    /// A session at the model's initial state, with no logits yet (call
    /// [`prefill`](Session::prefill) before generating).
    ///
    /// The sampler's stop tokens, stop strings, bans and penalties apply to everything this
    /// session generates.
    pub fn new(model: M, tokenizer: T, sampler: Sampler) -> Self {
        let state = model.borrow().init_state();
        Session {
            model,
            tokenizer,
            state,
            initial_sampler: sampler.clone(),
            sampler,
            logits: None,
            initial_state: None,
            prefill_chunk: DEFAULT_PREFILL_CHUNK,
        }
    }

    /// Starts from `state` instead of the model's initial state (a saved conversation, a tuned
    /// initial state), and makes it the state [`reset`](Session::reset) returns to. The logits
    /// are cleared: prefill a prompt before generating.
    ///
    /// # Errors
    /// [`Error::StateMismatch`] if `state` was not made for this model's version and sizes.
    pub fn with_initial_state(mut self, state: State) -> Result<Self> {
        self.set_state(state)?;
        self.initial_state = Some(Arc::new(self.state.clone()));
        Ok(self)
    }

    /// Sets how many prompt tokens go into one [`Model::forward`] call in
    /// [`prefill`](Session::prefill) (default [`DEFAULT_PREFILL_CHUNK`]; 0 is taken as 1). The
    /// result does not depend on it beyond floating-point rounding; memory grows with it.
    pub fn with_prefill_chunk(mut self, tokens: usize) -> Self {
        self.prefill_chunk = tokens.max(1);
        self
    }

    /// The model.
    pub fn model(&self) -> &Model {
        self.model.borrow()
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &T {
        &self.tokenizer
    }

    /// The recurrent state: every token read so far (to save it, clone it, inspect it).
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Replaces the state (e.g. with one loaded by [`Model::load_state`]) and clears the
    /// logits, which belong to the old state: prefill at least one token before generating.
    /// The sampler and the state [`reset`](Session::reset) returns to are unchanged.
    ///
    /// # Errors
    /// [`Error::StateMismatch`] if `state` was not made for this model's version and sizes, or
    /// an array of it was edited to another shape ([`State::check`]); the session is then
    /// unchanged.
    pub fn set_state(&mut self, state: State) -> Result<()> {
        state.check(self.model().config())?;
        self.state = state;
        self.logits = None;
        Ok(())
    }

    /// The state, consuming the session.
    pub fn into_state(self) -> State {
        self.state
    }

    /// The sampler (settings, penalty counts, random generator).
    pub fn sampler(&self) -> &Sampler {
        &self.sampler
    }

    /// The sampler, to change its random sequence (`rng_mut`) or forget its penalty counts.
    pub fn sampler_mut(&mut self) -> &mut Sampler {
        &mut self.sampler
    }

    /// The logits `[V]` of the next token (V = the model's vocabulary), or `None` if nothing
    /// has been read since the session started, was reset or had its state replaced.
    pub fn logits(&self) -> Option<ArrayView1<'_, f32>> {
        self.logits.as_ref().map(|l| l.view())
    }

    /// Reads `prompt` into the state with the sequence path ([`Model::forward`] on chunks of
    /// [`with_prefill_chunk`](Session::with_prefill_chunk) tokens, the state carried from chunk
    /// to chunk, the head run on the last token only) and keeps the last token's logits.
    ///
    /// Appends to whatever the session has read or generated: this is how a conversation
    /// continues. Prompt tokens are not counted by the repetition penalty (as in the official
    /// pipeline). An empty prompt changes nothing.
    ///
    /// # Errors
    /// [`Error::TokenOutOfRange`] naming the first id that is not below the model's vocabulary
    /// size; the session is then unchanged.
    pub fn prefill(&mut self, prompt: &[u32]) -> Result<()> {
        if prompt.is_empty() {
            return Ok(());
        }
        let model = self.model.borrow();
        let vocab = model.config().vocab;
        if let Some(&token) = prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::TokenOutOfRange { token, vocab });
        }
        // Every id is in range, no chunk is empty and the state fits the model (checked when
        // it was set): `forward` cannot fail after the first chunk has changed the state.
        let mut last = None;
        for chunk in prompt.chunks(self.prefill_chunk) {
            last = Some(model.forward(chunk, &mut self.state, Logits::Last)?);
        }
        self.logits = last.map(|l| l.index_axis_move(Axis(0), 0));
        Ok(())
    }

    /// [`prefill`](Session::prefill) with the tokenizer's encoding of `text`.
    ///
    /// RWKV prompts should not end with a space (the tokenizers put a space at the start of a
    /// word's token); this method does not trim it.
    ///
    /// # Errors
    /// As [`prefill`](Session::prefill), e.g. for a vocabulary larger than the model's.
    pub fn prefill_text(&mut self, text: &str) -> Result<()> {
        let ids = self.tokenizer.encode(text);
        self.prefill(&ids)
    }

    /// One step of the loop in the [module docs](self): samples a token from the current
    /// logits; a stop token is returned as such and nothing else changes but the random
    /// generator; any other token is read by the model (new logits) and recorded by the
    /// sampler.
    fn advance(&mut self) -> Result<Advance> {
        let logits = self.logits.as_ref().ok_or(Error::EmptyPrompt)?;
        let n = logits.len().min(self.tokenizer.vocab_size());
        let token = self.sampler.sample(logits.slice(s![..n]))?;
        if self.sampler.is_stop_token(token) {
            return Ok(Advance::Stop(token));
        }
        let bytes = self.tokenizer.token_bytes(token)?;
        let next = self.model.borrow().step(token, &mut self.state)?;
        self.sampler.accept(token, bytes);
        self.logits = Some(next);
        Ok(Advance::Token(token))
    }

    /// An iterator over at most `max_tokens` generated tokens (see the loop in the
    /// [module docs](self)). It ends early at a stop token (not yielded) and after the first
    /// error; [`Tokens::stop_reason`] says why it ended. Stop strings are not checked here:
    /// use [`text`](Session::text) for them.
    ///
    /// Each yielded token has already been read by the model, so dropping the iterator at any
    /// point leaves a consistent session.
    ///
    /// # Errors
    /// Items are [`Error::EmptyPrompt`] if there are no logits (nothing prefilled),
    /// [`Error::Sample`] for impossible sampler settings or logits (every token banned, NaN),
    /// [`Error::TokenOutOfRange`] for a banned id that is not below the sampled vocabulary.
    pub fn tokens(&mut self, max_tokens: usize) -> Tokens<'_, M, T> {
        Tokens {
            session: self,
            left: max_tokens,
            generated: 0,
            stop: None,
            done: false,
        }
    }

    /// An iterator over the text of at most `max_tokens` generated tokens, in pieces: each
    /// piece holds only whole characters (bytes of a character split over tokens are held back
    /// until it is complete), and no piece is empty.
    ///
    /// Generation ends at a stop token, at a stop string of the sampler (the stop string and
    /// anything after it are not yielded; text that may be the start of one is held back until
    /// it is decided), after `max_tokens` tokens, or after the first error;
    /// [`Text::stop_reason`] says which. At the end, held-back text is yielded and an
    /// incomplete trailing character becomes U+FFFD. Without stop strings, the pieces
    /// concatenate to `String::from_utf8_lossy` of the generated tokens' bytes.
    ///
    /// # Errors
    /// As [`tokens`](Session::tokens).
    pub fn text(&mut self, max_tokens: usize) -> Text<'_, M, T> {
        let stream = TextStream::new(&self.sampler.config().stop_strings);
        Text {
            tokens: self.tokens(max_tokens),
            stream,
            stop: None,
            done: false,
        }
    }

    /// Collects [`tokens`](Session::tokens).
    ///
    /// # Errors
    /// As [`tokens`](Session::tokens); the tokens generated before the error stay read.
    pub fn generate(&mut self, max_tokens: usize) -> Result<Vec<u32>> {
        self.tokens(max_tokens).collect()
    }

    /// Collects [`text`](Session::text).
    ///
    /// # Errors
    /// As [`tokens`](Session::tokens); the tokens generated before the error stay read.
    pub fn generate_text(&mut self, max_tokens: usize) -> Result<String> {
        self.text(max_tokens).collect()
    }

    /// An independent copy: same state, logits, sampler (settings, penalty counts and random
    /// generator: the copy draws the same tokens as the original would) and reset point. The
    /// model and tokenizer handles are cloned (a reference or an `Arc`, not the weights).
    pub fn fork(&self) -> Self
    where
        M: Clone,
        T: Clone,
    {
        Session {
            model: self.model.clone(),
            tokenizer: self.tokenizer.clone(),
            state: self.state.clone(),
            sampler: self.sampler.clone(),
            logits: self.logits.clone(),
            initial_state: self.initial_state.clone(),
            initial_sampler: self.initial_sampler.clone(),
            prefill_chunk: self.prefill_chunk,
        }
    }

    /// Returns to the start: the initial state (the model's, or the one given to
    /// [`with_initial_state`](Session::with_initial_state)), no logits, and the sampler as it
    /// was given to [`new`](Session::new) (penalty counts cleared, random generator rewound).
    /// The session then generates exactly what a new session built the same way would.
    pub fn reset(&mut self) {
        self.state = match &self.initial_state {
            Some(state) => State::clone(state),
            None => self.model.borrow().init_state(),
        };
        self.logits = None;
        self.sampler = self.initial_sampler.clone();
    }
}

impl<M, T> fmt::Debug for Session<M, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("state", &self.state.shape())
            .field("sampler", &self.sampler.config())
            .field("has_logits", &self.logits.is_some())
            .field("prefill_chunk", &self.prefill_chunk)
            .finish_non_exhaustive()
    }
}

/// The outcome of one sampling step.
enum Advance {
    Token(u32),
    Stop(u32),
}

/// Generated tokens: see [`Session::tokens`].
pub struct Tokens<'s, M, T> {
    session: &'s mut Session<M, T>,
    left: usize,
    generated: usize,
    stop: Option<StopReason>,
    done: bool,
}

impl<M, T> fmt::Debug for Tokens<'_, M, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens")
            .field("left", &self.left)
            .field("generated", &self.generated)
            .field("stop", &self.stop)
            .finish_non_exhaustive()
    }
}

impl<M, T> Tokens<'_, M, T> {
    /// Why the iterator ended (`None` while it runs, and after an error).
    pub fn stop_reason(&self) -> Option<StopReason> {
        self.stop
    }

    /// Tokens yielded so far.
    pub fn generated(&self) -> usize {
        self.generated
    }
}

impl<M: Borrow<Model>, T: Tokenizer> Iterator for Tokens<'_, M, T> {
    type Item = Result<u32>;

    fn next(&mut self) -> Option<Result<u32>> {
        if self.done {
            return None;
        }
        if self.left == 0 {
            self.done = true;
            self.stop = Some(StopReason::MaxTokens);
            return None;
        }
        match self.session.advance() {
            Ok(Advance::Token(token)) => {
                self.left -= 1;
                self.generated += 1;
                Some(Ok(token))
            }
            Ok(Advance::Stop(token)) => {
                self.done = true;
                self.stop = Some(StopReason::StopToken(token));
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

impl<M: Borrow<Model>, T: Tokenizer> std::iter::FusedIterator for Tokens<'_, M, T> {}

/// Generated text: see [`Session::text`].
pub struct Text<'s, M, T> {
    tokens: Tokens<'s, M, T>,
    stream: TextStream,
    stop: Option<StopReason>,
    done: bool,
}

impl<M, T> fmt::Debug for Text<'_, M, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Text")
            .field("tokens", &self.tokens)
            .field("stop", &self.stop)
            .finish_non_exhaustive()
    }
}

impl<M, T> Text<'_, M, T> {
    /// Why the iterator ended (`None` while it runs, and after an error).
    pub fn stop_reason(&self) -> Option<StopReason> {
        self.stop
    }

    /// Tokens generated so far (the tokens of a completed stop string included).
    pub fn generated(&self) -> usize {
        self.tokens.generated
    }
}

impl<M: Borrow<Model>, T: Tokenizer> Text<'_, M, T> {
    /// Ends the stream: the rest of the text (unless a stop string shows up in it).
    fn finish(&mut self, reason: StopReason) -> Option<Result<String>> {
        self.done = true;
        let rest = self.stream.finish();
        self.stop = Some(match self.stream.stopped() {
            Some(k) => StopReason::StopString(k),
            None => reason,
        });
        (!rest.is_empty()).then_some(Ok(rest))
    }
}

impl<M: Borrow<Model>, T: Tokenizer> Iterator for Text<'_, M, T> {
    type Item = Result<String>;

    fn next(&mut self) -> Option<Result<String>> {
        while !self.done {
            match self.tokens.next() {
                Some(Ok(token)) => {
                    let piece = match self.tokens.session.tokenizer.token_bytes(token) {
                        Ok(bytes) => self.stream.push(bytes),
                        Err(e) => {
                            self.done = true;
                            return Some(Err(e));
                        }
                    };
                    if let Some(k) = self.stream.stopped() {
                        self.done = true;
                        self.stop = Some(StopReason::StopString(k));
                        return (!piece.is_empty()).then_some(Ok(piece));
                    }
                    if !piece.is_empty() {
                        return Some(Ok(piece));
                    }
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(e));
                }
                None => match self.tokens.stop_reason() {
                    Some(reason) => return self.finish(reason),
                    None => self.done = true,
                },
            }
        }
        None
    }
}

impl<M: Borrow<Model>, T: Tokenizer> std::iter::FusedIterator for Text<'_, M, T> {}

/// Turns the bytes of generated tokens into text that is safe to show: whole UTF-8
/// characters only, and nothing that is, or may become, a stop string.
///
/// [`push`](TextStream::push) takes a token's bytes and returns the text now decided:
///
/// - bytes of an incomplete character are held back until the character is complete
///   ([`Utf8Stream`]); invalid bytes become U+FFFD;
/// - the longest tail of the text that is a proper prefix of a stop string is held back;
/// - when a stop string is complete, the text before it is returned, the stream is stopped
///   ([`stopped`](TextStream::stopped)) and the stop string and everything after it are
///   dropped. Of several stop strings, the one that starts first wins (then the first listed).
///
/// [`finish`](TextStream::finish) returns what is still held back at the end of generation.
/// Without stop strings, the outputs concatenate to `String::from_utf8_lossy` of all pushed
/// bytes, however they are split.
///
/// ```
/// use tokenshift::TextStream;
///
/// let mut stream = TextStream::new(&["\n\n"]);
/// let e = "é".as_bytes();
/// assert_eq!(stream.push(&[b'A', e[0]]), "A"); // half a character: held back
/// assert_eq!(stream.push(&[e[1], b'\n']), "é"); // "\n" may start "\n\n": held back
/// assert_eq!(stream.push(b"\nUser"), ""); // "\n\n" completed: stop
/// assert_eq!(stream.stopped(), Some(0));
/// assert_eq!(stream.finish(), "");
/// ```
#[derive(Clone, Debug, Default)]
pub struct TextStream {
    utf8: Utf8Stream,
    /// Decoded text not yet returned: a possible start of a stop string.
    held: String,
    stops: Vec<String>,
    stopped: Option<usize>,
}

impl TextStream {
    /// A stream that stops at any of `stop_strings` (empty strings are never matched).
    pub fn new<S: AsRef<str>>(stop_strings: &[S]) -> Self {
        TextStream {
            stops: stop_strings
                .iter()
                .map(|s| s.as_ref().to_string())
                .collect(),
            ..TextStream::default()
        }
    }

    /// Appends the bytes of one or more tokens and returns the text that is now decided (often
    /// empty). After a stop, returns nothing.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        if self.stopped.is_some() {
            return String::new();
        }
        self.utf8.push_into(bytes, &mut self.held);
        self.release(false)
    }

    /// Ends the text: returns everything still held back (an incomplete character as U+FFFD),
    /// unless that completes a stop string, in which case only the text before it. The stream
    /// can then be reused; [`stopped`](TextStream::stopped) is kept.
    pub fn finish(&mut self) -> String {
        if self.stopped.is_some() {
            return String::new();
        }
        let tail = self.utf8.finish();
        self.held.push_str(&tail);
        self.release(true)
    }

    /// The index (in the list given to [`new`](TextStream::new)) of the stop string that ended
    /// the text, if one did.
    pub fn stopped(&self) -> Option<usize> {
        self.stopped
    }

    /// Returns the held text up to a stop string, or, without one, all but the part that may
    /// still become one (nothing kept if `all`).
    fn release(&mut self, all: bool) -> String {
        if let Some((at, k)) = find_stop_string(&self.held, &self.stops) {
            self.stopped = Some(k);
            let mut out = std::mem::take(&mut self.held);
            out.truncate(at);
            return out;
        }
        let keep = if all {
            0
        } else {
            partial_stop_len(&self.held, &self.stops)
        };
        let rest = self.held.split_off(self.held.len() - keep);
        std::mem::replace(&mut self.held, rest)
    }
}
