//! Writes the seed corpus under `fuzz/seeds/` (run from the repository root):
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml --example make_seeds
//! ```
//!
//! - `model_load`: random-weight checkpoints of every version, tiny (width 8, vocabulary 16)
//!   so that a fuzzer gets through thousands a second, in f32, f16 and bf16;
//! - `state_load`: states of the RWKV-4, -6 and -7 test fixtures after a few tokens, and the
//!   RWKV-6 one as a state-tuning file;
//! - `vocab`: the 256 single bytes and a few dozen longer tokens of the World vocabulary,
//!   renumbered, followed by 0xFF and text to encode; and a file of escapes;
//! - `tokenizer_roundtrip`: short texts in several scripts, code, and invalid UTF-8.

use std::fs;
use std::path::{Path, PathBuf};
use tokenshift::config::{Config, Version};
use tokenshift::synthetic::{random_checkpoint, DType};
use tokenshift::weights::{Tensor, TensorMap};
use tokenshift::Model;

fn dir(target: &str) -> PathBuf {
    let dir = Path::new("fuzz/seeds").join(target);
    fs::create_dir_all(&dir).expect("create the seed directory");
    dir
}

fn tiny(version: Version, n_layer: usize) -> Config {
    let matrix = version.has_matrix_state();
    let v6 = version == Version::V6;
    let v7 = version == Version::V7;
    Config {
        version,
        n_layer,
        n_embd: 8,
        n_head: if matrix { 2 } else { 0 },
        head_size: if matrix { 4 } else { 0 },
        dim_ffn: 16,
        vocab: 16,
        dim_mix_lora: if v6 { 2 } else { 0 },
        dim_decay_lora: if v6 || v7 { 4 } else { 0 },
        dim_a_lora: if v7 { 4 } else { 0 },
        dim_v_lora: if v7 && n_layer > 1 { 4 } else { 0 },
        dim_g_lora: if v7 { 4 } else { 0 },
    }
}

fn models() {
    let out = dir("model_load");
    let cases = [
        ("v4-f32", Version::V4, 1, DType::F32),
        ("v5.0-f32", Version::V5_0, 1, DType::F32),
        ("v5.1-f16", Version::V5_1, 1, DType::F16),
        ("v5.2-bf16", Version::V5_2, 1, DType::Bf16),
        ("v6-f32", Version::V6, 1, DType::F32),
        ("v7-f32", Version::V7, 2, DType::F32),
        ("v7-f16", Version::V7, 1, DType::F16),
    ];
    for (seed, (name, version, n_layer, dtype)) in cases.into_iter().enumerate() {
        let map = random_checkpoint(&tiny(version, n_layer), dtype, seed as u64 + 1)
            .expect("consistent sizes");
        let path = out.join(format!("{name}.safetensors"));
        map.save(&path).expect("write a model seed");
        // Every seed must load, or the fuzzer starts from nothing.
        Model::load(&path).expect("a seed model loads");
    }
}

fn states() {
    let out = dir("state_load");
    for name in ["v4-a", "v6-a", "v7-a"] {
        let model = Model::load(format!("tests/fixtures/{name}/model.safetensors"))
            .expect("a test fixture loads");
        let mut state = model.init_state();
        for token in [3, 14, 15] {
            model.step(token, &mut state).expect("a step");
        }
        state
            .save(out.join(format!("{name}.state.safetensors")))
            .expect("write a state seed");
        // The same matrices as a state-tuning file, for `Model::state_from_tuning`.
        if name == "v6-a" {
            let mut tuning = TensorMap::new();
            for (tensor, values) in state.tensors() {
                if let Some(block) = tensor.strip_suffix(".att.wkv") {
                    tuning.insert(format!("{block}.att.time_state"), Tensor::F32(values));
                }
            }
            let path = out.join(format!("{name}.tuning.safetensors"));
            tuning.save(&path).expect("write a tuning seed");
            model
                .state_from_tuning(&path)
                .expect("the tuning seed loads");
        }
    }
}

fn vocabularies() {
    let out = dir("vocab");
    let world =
        fs::read_to_string("assets/vocab/rwkv_vocab_v20230424.txt").expect("the World vocabulary");
    let lines: Vec<&str> = world.lines().collect();
    let mut file = String::new();
    let mut id = 0;
    let mut add = |line: &str| {
        let (_, rest) = line.split_once(' ').expect("an id, then the token");
        id += 1;
        file += &format!("{id} {rest}\n");
    };
    // The single bytes, then tokens from several parts of the file (ASCII words, merges of
    // single-byte tokens, CJK, long runs).
    lines[..256].iter().for_each(|l| add(l));
    for at in [
        256, 300, 1000, 5000, 10000, 20000, 30000, 40000, 50000, 60000, 65000,
    ] {
        lines[at..at + 4].iter().for_each(|l| add(l));
    }
    for l in lines
        .iter()
        .filter(|l| l.ends_with(" 16") || l.ends_with(" 32"))
        .take(6)
    {
        add(l);
    }
    tokenshift::WorldTokenizer::from_vocab_str(&file).expect("the seed parses");
    let mut bytes = file.into_bytes();
    bytes.push(0xff);
    bytes.extend_from_slice("Hello world\n\n\tfn main() { 日本語 } aaaa".as_bytes());
    fs::write(out.join("world-subset"), &bytes).expect("write a vocabulary seed");

    // Every escape the format knows, with single bytes given as octal, \x, and str literals.
    let mut file = String::new();
    for b in 0..256u32 {
        let token = match b {
            0x20..=0x7e if b != u32::from(b'\'') && b != u32::from(b'\\') => {
                format!("'{}'", char::from_u32(b).expect("ASCII"))
            }
            _ if b % 3 == 0 => format!("b'\\{b:03o}'"),
            _ => format!("b'\\x{b:02x}'"),
        };
        file += &format!("{} {token} 1\n", b + 1);
    }
    let extra = [
        r#""\u00e9t\u00e9" 5"#,
        r#"'\U0001F600' 4"#,
        r#"b'\r\n' 2"#,
        r#"'\t\\\'\"\a\b\f\v' 8"#,
        r#"'ab' 2"#,
        r#"'abc' 3"#,
        r#"'\q' 2"#,
    ];
    for (i, e) in extra.iter().enumerate() {
        file += &format!("{} {e}\n", 257 + i);
    }
    fs::write(out.join("escapes"), file.as_bytes()).expect("write a vocabulary seed");
    tokenshift::WorldTokenizer::from_vocab_bytes(file.as_bytes()).expect("the seed parses");
}

fn texts() {
    let out = dir("tokenizer_roundtrip");
    let texts: [(&str, &[u8]); 6] = [
        (
            "english",
            b"Hello world\n\nThe quick brown fox jumps over the lazy dog.",
        ),
        (
            "code",
            b"fn main() {\n    println!(\"{}\", 1 + 2);\n}\n\t\t// done\r\n",
        ),
        (
            "cjk",
            "日本語のテキストと中文文本。한국어 텍스트".as_bytes(),
        ),
        ("emoji", "😀👍🏽 family: 👨‍👩‍👧 flags 🇫🇷🇯🇵".as_bytes()),
        (
            "invalid-utf8",
            b"ok \xff\xfe \xe6\x97 \xf0\x9f\x98 \xc0\xaf end\xe6",
        ),
        (
            "spaces",
            b"          \n\n\n\n                                \t\t\t\t",
        ),
    ];
    for (name, bytes) in texts {
        fs::write(out.join(name), bytes).expect("write a text seed");
    }
}

fn main() {
    models();
    states();
    vocabularies();
    texts();
    println!("wrote the seeds under fuzz/seeds/");
}
