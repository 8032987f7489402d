//! Packed batches (`cu_seqlens`): sequences of mixed lengths laid end to end in one row give, on
//! every reference case and backend, the logits each sequence gives alone, the loss over all their
//! targets, and (with `--state-out`) each sequence's own state.

mod common;
use common::*;

use safetensors::Dtype;

#[test]
fn packed_rows_match_separate_runs() {
    let dir = scratch("packed");
    for case in cases() {
        let name = case.file_name().unwrap().to_str().unwrap().to_string();
        let io = read(&case.join("io.safetensors"));
        let ids = &io["input_ids"];
        let (b, t) = (ids.shape[0], ids.shape[1]);
        let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(case.join("config.json")).unwrap()).unwrap();
        let mb = config["mini_batch_size"].as_u64().unwrap_or(16) as usize;
        // Lengths 1, below a mini-batch, past one, and whole rows; cut from different rows.
        let lengths = [1, mb - 1, (mb + 3).min(t), t];
        let pieces: Vec<Vec<i64>> = lengths.iter().enumerate().map(|(k, &len)| {
            let r = k % b;
            ids.i64[r * t..r * t + len].to_vec()
        }).collect();
        let mut cu = vec![0i64];
        for piece in &pieces {
            cu.push(cu.last().unwrap() + piece.len() as i64);
        }
        let packed: Vec<i64> = pieces.concat();
        let input = dir.join(format!("{name}-packed-in.safetensors"));
        write_raw(&input, &[
            ("input_ids".into(), Dtype::I64, vec![1, packed.len()], i64_bytes(&packed)),
            ("cu_seqlens".into(), Dtype::I64, vec![cu.len()], i64_bytes(&cu)),
        ]);
        for backend in ["interp", "cpu", "ptx-sim"] {
            let (out, state) = (dir.join(format!("{name}-{backend}-out.safetensors")), dir.join(format!("{name}-{backend}-state.safetensors")));
            let r = tttc(&["run", p(&case), "--input", p(&input), "--output", p(&out), "--state-out", p(&state), "--backend", backend]);
            assert!(r.status.success(), "{name} ({backend}): {}", String::from_utf8_lossy(&r.stderr));
            let got = read(&out);
            let states = read(&state);
            let v = got["logits"].shape[2];
            assert_eq!(got["logits"].shape, vec![1, packed.len(), v], "{name} ({backend})");
            let (mut loss_sum, mut targets) = (0f64, 0usize);
            for (k, piece) in pieces.iter().enumerate() {
                let alone_in = dir.join(format!("{name}-{backend}-{k}-in.safetensors"));
                let (alone_out, alone_state) = (dir.join(format!("{name}-{backend}-{k}-out.safetensors")), dir.join(format!("{name}-{backend}-{k}-state.safetensors")));
                write_raw(&alone_in, &[("input_ids".into(), Dtype::I64, vec![1, piece.len()], i64_bytes(piece))]);
                let r = tttc(&["run", p(&case), "--input", p(&alone_in), "--output", p(&alone_out), "--state-out", p(&alone_state), "--backend", backend]);
                assert!(r.status.success(), "{name} ({backend}) piece {k}: {}", String::from_utf8_lossy(&r.stderr));
                let alone = read(&alone_out);
                let at = cu[k] as usize * v..cu[k + 1] as usize * v;
                let ratio = parity_ratio(&got["logits"].f32[at], &alone["logits"].f32, 1e-5);
                assert!(ratio <= 1.0, "{name} ({backend}) piece {k}: logits at {ratio:.2}x tolerance");
                if piece.len() > 1 {
                    loss_sum += alone["loss"].f32[0] as f64 * (piece.len() - 1) as f64;
                    targets += piece.len() - 1;
                }
                for (key, want) in read(&alone_state) {
                    let have = &states.get(&format!("seq.{k}.{key}")).unwrap_or_else(|| panic!("{name} ({backend}): no state seq.{k}.{key}"));
                    assert_eq!(have.shape, want.shape, "{name} ({backend}) seq.{k}.{key}");
                    let ratio = parity_ratio(&have.f32, &want.f32, 1e-5);
                    assert!(ratio <= 1.0, "{name} ({backend}) seq.{k}.{key} at {ratio:.2}x tolerance");
                }
            }
            let ratio = parity_ratio(&got["loss"].f32, &[(loss_sum / targets as f64) as f32], 1e-5);
            assert!(ratio <= 1.0, "{name} ({backend}): loss at {ratio:.2}x tolerance");
        }
    }
}
