//! PyTorch `.pth` checkpoints from arbitrary bytes.
//!
//! The input is a would-be `torch.save` zip archive. Checks:
//!
//! - `PthFile::from_bytes` never panics, and `Checkpoint::from_bytes` accepts exactly the same
//!   archives (inputs starting with the zip signature);
//! - every tensor of an accepted file reports its shape and type, and reading it never panics:
//!   a readable one decodes to its reported shape, seen in place with the bytes of its shape;
//! - `Model::from_source` on an accepted file never panics, and a model it loads runs a step
//!   with logits of its width.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tokenshift::weights::{element_size, Checkpoint, PthFile, TensorSource};
use tokenshift::Model;

fuzz_target!(|data: &[u8]| {
    let file = PthFile::from_bytes(data.to_vec());
    if data.starts_with(b"PK\x03\x04") {
        assert_eq!(file.is_ok(), Checkpoint::from_bytes(data.to_vec()).is_ok());
    }
    let Ok(file) = file else { return };
    for name in file.names() {
        let shape = file.shape(name).expect("listed");
        match file.dtype(name).expect("listed") {
            Ok(dtype) => {
                if let Ok(t) = file.tensor(name) {
                    assert_eq!(t.shape(), &shape[..]);
                    assert_eq!(t.dtype(), dtype);
                    let raw = file.raw(name).expect("readable in place");
                    let n: usize = shape.iter().product();
                    assert_eq!(raw.bytes.len(), n * element_size(dtype));
                }
            }
            Err(_) => assert!(file.tensor(name).is_err()),
        }
    }
    if let Ok(model) = Model::from_source(&file) {
        let mut state = model.init_state();
        if let Ok(logits) = model.step(0, &mut state) {
            assert_eq!(logits.len(), model.config().vocab);
        }
    }
});
