//! `tttc run --state-out S`: the logits and loss are the forward pass's, and S holds the state
//! after the sequence, exactly as the decoder's prefill computes it (the state decoding is
//! checked to continue from), on every reference case and every backend that runs here.

mod common;
use common::*;

use tttc_frontends::Mode;
use tttc_runtime::{Backend, Executable};

#[test]
fn run_writes_the_state_after_the_sequence() {
    let out_dir = scratch("state_out");
    for case in cases() {
        let name = case.file_name().unwrap().to_str().unwrap().to_string();
        let io = case.join("io.safetensors");
        let model = tttc_frontends::load(&case, None).unwrap();
        let ids = tttc_runtime::read_tensors(&io).unwrap().into_iter().find(|(n, _)| n == "input_ids").unwrap().1;
        // The prefill graph's state outputs: the reference.
        let prefill = tttc_frontends::build_for(&model.config, Mode::Prefill).unwrap();
        let prefill = Executable::new(tttc_passes::compile(&prefill.g).unwrap());
        let outs = prefill.run(&model.weights, &ids, Backend::Interp).unwrap();
        let expected: Vec<(String, Vec<f32>)> = prefill
            .graph
            .outputs
            .iter()
            .zip(outs)
            .filter_map(|((n, _), t)| n.strip_prefix("state.").map(|s| (s.to_string(), t.as_f32().unwrap().to_vec())))
            .collect();
        assert!(!expected.is_empty(), "{name}: the prefill has no state");
        for backend in ["interp", "cpu", "ptx-sim"] {
            let (out, state) = (out_dir.join(format!("{name}-{backend}-out.safetensors")), out_dir.join(format!("{name}-{backend}-state.safetensors")));
            let r = tttc(&["run", p(&case), "--input", p(&io), "--output", p(&out), "--state-out", p(&state), "--backend", backend]);
            assert!(r.status.success(), "{name} ({backend}): {}", String::from_utf8_lossy(&r.stderr));
            let reference = read(&io);
            let got = read(&out);
            let ratio = parity_ratio(&got["logits"].f32, &reference["logits"].f32, 1e-5);
            assert!(ratio <= 1.0, "{name} ({backend}): logits at {ratio:.2}x tolerance");
            let saved = read(&state);
            assert_eq!(saved.len(), expected.len(), "{name} ({backend}): state tensors {:?}", saved.keys().collect::<Vec<_>>());
            for (k, want) in &expected {
                let have = &saved.get(k).unwrap_or_else(|| panic!("{name} ({backend}): no state {k}")).f32;
                let ratio = parity_ratio(have, want, 1e-5);
                assert!(ratio <= 1.0, "{name} ({backend}): state {k} at {ratio:.2}x tolerance");
            }
        }
    }
}
