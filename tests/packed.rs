//! Packed batches (`cu_seqlens`): sequences of mixed lengths laid end to end in one row give, on
//! every reference case and backend, the logits each sequence gives alone, the loss over all their
//! targets, and (with `--state-out`) each sequence's own state.

mod common;
use common::*;

use safetensors::Dtype;

#[test]
fn packed_rows_match_separate_runs() {
    check_packed_rows(&backends(), "packed");
}

/// The same on a GPU (`cuda`).
#[test]
#[ignore = "needs a GPU"]
fn packed_rows_match_separate_runs_on_the_gpu() {
    check_packed_rows(&gpu_backends(), "packed_cuda");
}

fn check_packed_rows(backends: &[&str], scratch_name: &str) {
    let dir = scratch(scratch_name);
    for case in all_cases().into_iter().filter(|c| backends.iter().any(|b| runs_on(c, b))) {
        let name = case.file_name().unwrap().to_str().unwrap().to_string();
        let io = read(&case.join("io.safetensors"));
        let ids = &io["input_ids"];
        let (b, t) = (ids.shape[0], ids.shape[1]);
        if t < 2 {
            continue; // one token: no pieces to cut, no targets for a loss
        }
        let mb = mini_batch(&case);
        // Lengths 1, below a mini-batch, past one, and whole rows; cut from different rows.
        let lengths = [1, mb - 1, mb + 3, t].map(|n| n.min(t));
        let pieces: Vec<Vec<i64>> = lengths
            .iter()
            .enumerate()
            .map(|(k, &len)| {
                let r = k % b;
                ids.i64[r * t..r * t + len].to_vec()
            })
            .collect();
        let mut cu = vec![0i64];
        for piece in &pieces {
            cu.push(cu.last().unwrap() + piece.len() as i64);
        }
        let packed: Vec<i64> = pieces.concat();
        let input = dir.join(format!("{name}-packed-in.safetensors"));
        write_raw(
            &input,
            &[("input_ids".into(), Dtype::I64, vec![1, packed.len()], i64_bytes(&packed)), ("cu_seqlens".into(), Dtype::I64, vec![cu.len()], i64_bytes(&cu))],
        );
        for backend in backends.iter().copied().filter(|b| runs_on(&case, b)) {
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
                let (alone_out, alone_state) =
                    (dir.join(format!("{name}-{backend}-{k}-out.safetensors")), dir.join(format!("{name}-{backend}-{k}-state.safetensors")));
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
                assert_state_matches(&states, &format!("seq.{k}."), &read(&alone_state), &format!("{name} ({backend})"));
            }
            let ratio = parity_ratio(&got["loss"].f32, &[(loss_sum / targets as f64) as f32], 1e-5);
            assert!(ratio <= 1.0, "{name} ({backend}): loss at {ratio:.2}x tolerance");
        }
    }
}

/// With `--state-in`, each sequence of a packed batch continues from its own state (`seq.{i}.NAME`):
/// pieces of lengths 1, b − 1 and b + 3 that follow prefixes of 1, b + 1 and b tokens of their
/// rows, each prefix's state saved by a run of its own, give the reference logits at their
/// positions, and the packed run saves each sequence's state after it, that of one run over its
/// prefix and itself.
#[test]
fn packed_rows_continue_their_own_states() {
    check_packed_states(&backends(), "packed_state_in");
}

/// The same on a GPU (`cuda`).
#[test]
#[ignore = "needs a GPU"]
fn packed_rows_continue_their_own_states_on_the_gpu() {
    check_packed_states(&gpu_backends(), "packed_state_in_cuda");
}

fn check_packed_states(backends: &[&str], scratch_name: &str) {
    let dir = scratch(scratch_name);
    for case in all_cases().into_iter().filter(|c| backends.iter().any(|b| runs_on(c, b))) {
        let name = case.file_name().unwrap().to_str().unwrap().to_string();
        let io = read(&case.join("io.safetensors"));
        let ids = &io["input_ids"];
        let (b, t, v) = (ids.shape[0], ids.shape[1], io["logits"].shape[2]);
        if t < 2 {
            continue; // one token: no prefix before a piece
        }
        let mb = mini_batch(&case);
        // (row, prefix, piece length), each inside the row.
        let spans: Vec<(usize, usize, usize)> =
            [(1, 1), (mb + 1, mb - 1), (mb, mb + 3)].iter().enumerate().map(|(k, &(pre, len))| (k % b, pre.min(t - 1), len.min(t - pre.min(t - 1)))).collect();
        for backend in backends.iter().copied().filter(|b| runs_on(&case, b)) {
            let mut start = Vec::new();
            for (k, &(r, pre, _)) in spans.iter().enumerate() {
                let (input, out, state) = (
                    dir.join(format!("{name}-{k}-pre-in.safetensors")),
                    dir.join(format!("{name}-{k}-pre-out.safetensors")),
                    dir.join(format!("{name}-{k}-pre-state.safetensors")),
                );
                write_raw(&input, &[("input_ids".into(), Dtype::I64, vec![1, pre], i64_bytes(&ids.i64[r * t..r * t + pre]))]);
                let r = tttc(&["run", p(&case), "--input", p(&input), "--output", p(&out), "--state-out", p(&state), "--backend", backend]);
                assert!(r.status.success(), "{name} ({backend}) prefix {k}: {}", String::from_utf8_lossy(&r.stderr));
                start.extend(read_raw(&state).into_iter().map(|(n, dt, shape, data)| (format!("seq.{k}.{n}"), dt, shape, data)));
            }
            let start_file = dir.join(format!("{name}-{backend}-start.safetensors"));
            write_raw(&start_file, &start);
            let pieces: Vec<&[i64]> = spans.iter().map(|&(r, pre, len)| &ids.i64[r * t + pre..r * t + pre + len]).collect();
            let mut cu = vec![0i64];
            for piece in &pieces {
                cu.push(cu.last().unwrap() + piece.len() as i64);
            }
            let packed = pieces.concat();
            let input = dir.join(format!("{name}-{backend}-in.safetensors"));
            write_raw(
                &input,
                &[
                    ("input_ids".into(), Dtype::I64, vec![1, packed.len()], i64_bytes(&packed)),
                    ("cu_seqlens".into(), Dtype::I64, vec![cu.len()], i64_bytes(&cu)),
                ],
            );
            let (out, end) = (dir.join(format!("{name}-{backend}-out.safetensors")), dir.join(format!("{name}-{backend}-end.safetensors")));
            let r =
                tttc(&["run", p(&case), "--input", p(&input), "--output", p(&out), "--state-in", p(&start_file), "--state-out", p(&end), "--backend", backend]);
            assert!(r.status.success(), "{name} ({backend}): {}", String::from_utf8_lossy(&r.stderr));
            let got = read(&out)["logits"].f32.clone();
            for (k, &(r, pre, len)) in spans.iter().enumerate() {
                let want = &io["logits"].f32[(r * t + pre) * v..(r * t + pre + len) * v];
                let ratio = parity_ratio(&got[cu[k] as usize * v..cu[k + 1] as usize * v], want, 1e-5);
                assert!(ratio <= 1.0, "{name} ({backend}) sequence {k}: logits at {ratio:.2}x tolerance");
            }
            // Each sequence's state after it: that of one run over its prefix and itself.
            let end = read(&end);
            for (k, &(r, pre, len)) in spans.iter().enumerate() {
                let (input, out, state) = (
                    dir.join(format!("{name}-{k}-all-in.safetensors")),
                    dir.join(format!("{name}-{k}-all-out.safetensors")),
                    dir.join(format!("{name}-{k}-all-state.safetensors")),
                );
                write_raw(&input, &[("input_ids".into(), Dtype::I64, vec![1, pre + len], i64_bytes(&ids.i64[r * t..r * t + pre + len]))]);
                let run = tttc(&["run", p(&case), "--input", p(&input), "--output", p(&out), "--state-out", p(&state), "--backend", backend]);
                assert!(run.status.success(), "{name} ({backend}) sequence {k}: {}", String::from_utf8_lossy(&run.stderr));
                assert_state_matches(&end, &format!("seq.{k}."), &read(&state), &format!("{name} ({backend})"));
            }
        }
    }
}
