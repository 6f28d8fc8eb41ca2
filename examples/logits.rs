//! Runs a model on a token list and writes the logits after every token.
//!
//! ```text
//! cargo run --release --example logits -- --model M.safetensors --tokens 1,2,3 \
//!     [--mode seq|step] [--out OUT.safetensors] [--state-out S.safetensors]
//! ```
//!
//! `OUT` gets one f32 tensor `logits` of shape `[T, vocab]`; `--mode seq` runs the whole list at
//! once, `--mode step` one token at a time. With `--state-out` the final state is saved too.
//! Both files are written atomically; neither may be the model (nor each other).

mod args;

use ndarray::{stack, Array2, Axis};
use safetensors::tensor::{Dtype, TensorView};
use tokenshift::{Logits, Model};

fn write_logits(path: &str, logits: &Array2<f32>) -> Result<(), String> {
    let bytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view =
        TensorView::new(Dtype::F32, logits.shape().to_vec(), &bytes).map_err(|e| e.to_string())?;
    let file = safetensors::serialize([("logits", view)], None).map_err(|e| e.to_string())?;
    args::write_file(path, &file)
}

fn main() {
    args::run(|| {
        let args = args::Args::parse(&["model", "tokens", "mode", "out", "state-out"], &[])?;
        let model_path = args.required("model")?;
        for flag in ["out", "state-out"] {
            if let Some(out) = args.get(flag) {
                args::refuse_overwrite((flag, out), &[("model", model_path)])?;
            }
        }
        if let (Some(out), Some(state)) = (args.get("out"), args.get("state-out")) {
            if out == state || args::same_file(out.as_ref(), state.as_ref()) {
                return Err(format!(
                    "--out `{out}` and --state-out `{state}` are the same file"
                ));
            }
        }
        let model = Model::load(model_path).map_err(|e| e.to_string())?;
        println!("{}", model.config());
        let tokens = args
            .required("tokens")?
            .split(',')
            .map(|t| {
                t.trim()
                    .parse::<u32>()
                    .map_err(|_| format!("--tokens: `{t}` is not a token id"))
            })
            .collect::<Result<Vec<u32>, String>>()?;
        let mut state = model.init_state();
        let logits = match args.get("mode").unwrap_or("seq") {
            "seq" => model
                .forward(&tokens, &mut state, Logits::All)
                .map_err(|e| e.to_string())?,
            "step" => {
                let rows = tokens
                    .iter()
                    .map(|&t| model.step(t, &mut state))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| e.to_string())?;
                let views: Vec<_> = rows.iter().map(|r| r.view()).collect();
                stack(Axis(0), &views).map_err(|e| e.to_string())?
            }
            other => return Err(format!("--mode must be seq or step, not `{other}`")),
        };
        println!("logits: [{}, {}]", logits.nrows(), logits.ncols());
        if let Some(out) = args.get("out") {
            write_logits(out, &logits)?;
            println!("wrote {out}");
        }
        if let Some(path) = args.get("state-out") {
            state.save(path).map_err(|e| e.to_string())?;
            println!("wrote {path}");
        }
        Ok(())
    });
}
