//! Runs a model on a token list and writes the logits after every token.
//!
//! ```text
//! cargo run --release --example logits -- --help
//! cargo run --release --example logits -- --model PATH [--quantize q8_0] --tokens 1,2,3 \
//!     [--mode seq|step] [--out OUT.safetensors] [--state-out S.safetensors]
//! ```
//!
//! `OUT` gets one f32 tensor `logits` of shape `[T, vocab]`; `--mode seq` runs the whole list at
//! once, `--mode step` one token at a time. With `--state-out` the final state is saved too.
//! Both files are written atomically; neither may be the model (nor each other). `--model`
//! takes any checkpoint the crate reads (see `Model::load`).

mod args;

use clap::Parser;
use ndarray::{stack, Array2, Axis};
use safetensors::tensor::{Dtype, TensorView};
use tokenshift::Logits;

/// How the tokens are run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    /// The whole list at once (the sequence path)
    Seq,
    /// One token at a time (the recurrent path)
    Step,
}

/// Runs a model on a token list and writes the logits after every token.
#[derive(Parser, Debug)]
#[command(name = "logits")]
struct Cli {
    /// RWKV checkpoint: a safetensors, GGUF or PyTorch .pth file, or a Hugging Face folder
    /// (the container is detected from the file)
    #[arg(long, value_name = "PATH")]
    model: String,
    /// Quantize the block projections and the head to this block format at load: q8_0, q4_0,
    /// q5_0, q5_1, q4_k, q5_k or q6_k (the embedding stays as stored; a matrix not a whole
    /// number of 256-value blocks wide takes a K type's fallback, q5_0, q5_1 or q8_0, and one
    /// not whole 32-value blocks wide stays as stored)
    #[arg(long, value_name = "TYPE", value_parser = args::parse_quant)]
    quantize: Option<tokenshift::storage::quant::QuantType>,
    /// Comma-separated token ids to run
    #[arg(long, value_name = "IDS")]
    tokens: args::TokenIds,
    /// Run the tokens all at once or one at a time
    #[arg(long, value_enum, default_value_t = Mode::Seq)]
    mode: Mode,
    /// Write the logits (one f32 tensor `logits` of shape [T, vocab]) to this safetensors
    /// file, atomically
    #[arg(long, value_name = "OUT.safetensors")]
    out: Option<String>,
    /// Save the final state to this file, atomically
    #[arg(long, value_name = "S.safetensors")]
    state_out: Option<String>,
}

fn write_logits(path: &str, logits: &Array2<f32>) -> Result<(), String> {
    let bytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view =
        TensorView::new(Dtype::F32, logits.shape().to_vec(), &bytes).map_err(|e| e.to_string())?;
    let file = safetensors::serialize([("logits", view)], None).map_err(|e| e.to_string())?;
    args::write_file(path, &file)
}

fn main() {
    args::run(|| {
        let cli = Cli::parse();
        let model_path = cli.model.as_str();
        for (flag, out) in [("out", &cli.out), ("state-out", &cli.state_out)] {
            if let Some(out) = out {
                args::refuse_overwrite((flag, out), &[("model", model_path)])?;
            }
        }
        if let (Some(out), Some(state)) = (cli.out.as_deref(), cli.state_out.as_deref()) {
            if out == state || args::same_file(out.as_ref(), state.as_ref()) {
                return Err(format!(
                    "--out `{out}` and --state-out `{state}` are the same file"
                ));
            }
        }
        let model = args::load_model(model_path, cli.quantize)?;
        println!("{}", model.config());
        let tokens = &cli.tokens.0;
        let mut state = model.init_state();
        let logits = match cli.mode {
            Mode::Seq => model
                .forward(tokens, &mut state, Logits::All)
                .map_err(|e| e.to_string())?,
            Mode::Step => {
                let rows = tokens
                    .iter()
                    .map(|&t| model.step(t, &mut state))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| e.to_string())?;
                let views: Vec<_> = rows.iter().map(|r| r.view()).collect();
                stack(Axis(0), &views).map_err(|e| e.to_string())?
            }
        };
        println!("logits: [{}, {}]", logits.nrows(), logits.ncols());
        if let Some(out) = cli.out.as_deref() {
            write_logits(out, &logits)?;
            println!("wrote {out}");
        }
        if let Some(path) = cli.state_out.as_deref() {
            state.save(path).map_err(|e| e.to_string())?;
            println!("wrote {path}");
        }
        Ok(())
    });
}
