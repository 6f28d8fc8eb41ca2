//! Streams a continuation of a prompt, then prints the prefill and generation speed.
//!
//! ```text
//! cargo run --release --example generate
//! cargo run --release --example generate -- [--model M.safetensors] [--vocab FILE|world|bytes]
//!     [--prompt TEXT] [--max-tokens N] [--temperature T] [--top-p P] [--top-k K] [--seed S]
//!     [--state-in S.safetensors] [--state-out S.safetensors]
//! ```
//!
//! Without `--model` it runs the shipped `assets/models/kjv-rwkv6.safetensors` (a small byte-level
//! RWKV-6 trained on the King James Bible) on "In the beginning". `--vocab` defaults to `bytes`
//! for byte-level models (at most 257 outputs) and to the shipped World vocabulary (`world`)
//! otherwise. Sampling uses the official defaults (temperature 1, top-p 0.85, presence and
//! frequency penalties 0.2, decay 0.996) and stops at the end-of-text token 0.
//!
//! `--state-in` continues a saved conversation (only the new prompt is read) and `--state-out`
//! saves the state after the generated text, so runs can be chained.
//!
//! The text goes to stdout; the speeds go to stderr.

mod args;

use std::io::{ErrorKind, Write};
use std::time::Instant;
use tokenshift::{Model, Sampler, SamplerConfig, Session, StopReason};

const DEFAULT_MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/assets/models/kjv-rwkv6.safetensors"
);
const DEFAULT_PROMPT: &str = "In the beginning";

fn main() {
    args::run(|| {
        let args = args::Args::parse(
            &[
                "model",
                "vocab",
                "prompt",
                "max-tokens",
                "temperature",
                "top-p",
                "top-k",
                "seed",
                "state-in",
                "state-out",
            ],
            &[],
        )?;
        let model_path = args.get("model").unwrap_or(DEFAULT_MODEL);
        let model = Model::load(model_path).map_err(|e| e.to_string())?;
        eprintln!("{}", model.config());

        let vocab = args::Vocab::from_flag(
            args.get("vocab"),
            args::Vocab::for_model(model.config().vocab),
        )?;
        let tokenizer = vocab.tokenizer();

        let config = SamplerConfig {
            temperature: args.parsed("temperature", 1.0)?,
            top_p: args.parsed("top-p", 0.85)?,
            top_k: args.parsed("top-k", 0)?,
            token_stop: vec![0],
            ..SamplerConfig::default()
        };
        let sampler = Sampler::new(config, args.parsed("seed", 0)?).map_err(|e| e.to_string())?;
        let mut session = Session::new(&model, tokenizer, sampler);
        if let Some(path) = args.get("state-in") {
            let state = model.load_state(path).map_err(|e| e.to_string())?;
            session = session
                .with_initial_state(state)
                .map_err(|e| e.to_string())?;
        }

        let prompt = args.get("prompt").unwrap_or(DEFAULT_PROMPT);
        let max_tokens: usize = args.parsed("max-tokens", 200)?;
        let prompt_ids = tokenizer.encode(prompt);
        let start = Instant::now();
        session.prefill(&prompt_ids).map_err(|e| e.to_string())?;
        let prefill_secs = start.elapsed().as_secs_f64();

        let mut out = std::io::stdout().lock();
        let print = |out: &mut std::io::StdoutLock, text: &str| -> Result<bool, String> {
            match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == ErrorKind::BrokenPipe => Ok(false),
                Err(e) => Err(format!("cannot write to stdout: {e}")),
            }
        };
        print(&mut out, prompt)?;
        let start = Instant::now();
        let mut text = session.text(max_tokens);
        for piece in text.by_ref() {
            if !print(&mut out, &piece.map_err(|e| e.to_string())?)? {
                break;
            }
        }
        let generated = text.generated();
        let stop = text.stop_reason();
        drop(text);
        let gen_secs = start.elapsed().as_secs_f64();
        print(&mut out, "\n")?;

        let ended = match stop {
            Some(StopReason::MaxTokens) => "max tokens".to_string(),
            Some(StopReason::StopToken(t)) => format!("stop token {t}"),
            Some(StopReason::StopString(k)) => format!("stop string {k}"),
            None => "output closed".to_string(),
        };
        eprintln!(
            "prefill: {} tokens in {:.3} s ({:.1} tokens/s); generation: {} tokens in {:.3} s \
             ({:.1} tokens/s, ended by {ended})",
            prompt_ids.len(),
            prefill_secs,
            prompt_ids.len() as f64 / prefill_secs,
            generated,
            gen_secs,
            generated as f64 / gen_secs,
        );
        if let Some(path) = args.get("state-out") {
            session.state().save(path).map_err(|e| e.to_string())?;
            eprintln!("state saved to {path}");
        }
        Ok(())
    });
}
