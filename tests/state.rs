//! `tttc run --state-out S`: the logits and loss are the forward pass's, and S holds the state
//! after the sequence, exactly as the decoder's prefill computes it (the state decoding is
//! checked to continue from), on every reference case and every backend that runs here.
//! `--state-in S`: a sequence run in pieces, the state handed from each to the next, gives the
//! logits and the final state of one run.

mod common;
use common::*;

use std::path::Path;

use safetensors::Dtype;
use tttc_frontends::Mode;
use tttc_runtime::Executable;

#[test]
fn run_writes_the_state_after_the_sequence() {
    check_state_out(&backends(), "state_out");
}

/// The same on a GPU (`cuda`).
#[test]
#[ignore = "needs a GPU"]
fn run_writes_the_state_after_the_sequence_on_the_gpu() {
    check_state_out(&gpu_backends(), "state_out_cuda");
}

fn check_state_out(backends: &[&str], scratch_name: &str) {
    let out_dir = scratch(scratch_name);
    for case in all_cases().into_iter().filter(|c| backends.iter().any(|b| runs_on(c, b))) {
        let name = case.file_name().unwrap().to_str().unwrap().to_string();
        let io = case.join("io.safetensors");
        let model = tttc_frontends::load(&case, None).unwrap();
        let ids = tttc_runtime::read_tensors(&io).unwrap().into_iter().find(|(n, _)| n == "input_ids").unwrap().1;
        // The prefill graph's state outputs: the reference.
        let prefill = tttc_frontends::build_for(&model.config, Mode::Prefill).unwrap();
        let prefill = Executable::new(tttc_passes::compile(&prefill.g).unwrap());
        let outs = prefill.run(&model.weights, &ids, tttc_runtime::backend("interp").unwrap()).unwrap();
        let expected: Vec<(String, Vec<f32>)> = prefill
            .graph
            .outputs
            .iter()
            .zip(outs)
            .filter_map(|((n, _), t)| n.strip_prefix("state.").map(|s| (s.to_string(), t.as_f32().unwrap().to_vec())))
            .collect();
        assert!(!expected.is_empty(), "{name}: the prefill has no state");
        for backend in backends.iter().copied().filter(|b| runs_on(&case, b)) {
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

/// Runs `tttc run` on the tokens `ids[.., from..to]` of a case, from the state file `start` if
/// given, writing the state after them to `end`; returns the logits `[B, to − from, V]`.
#[allow(clippy::too_many_arguments)] // one piece of a chunked run: each argument names a part of it
fn run_piece(case: &Path, dir: &Path, tag: &str, ids: &Array, (from, to): (usize, usize), start: Option<&Path>, end: &Path, backend: &str) -> Vec<f32> {
    let (b, t) = (ids.shape[0], ids.shape[1]);
    let piece: Vec<i64> = (0..b).flat_map(|r| ids.i64[r * t + from..r * t + to].to_vec()).collect();
    let (input, out) = (dir.join(format!("{tag}-in.safetensors")), dir.join(format!("{tag}-out.safetensors")));
    write_raw(&input, &[("input_ids".into(), Dtype::I64, vec![b, to - from], i64_bytes(&piece))]);
    let mut args = vec!["run", p(case), "--input", p(&input), "--output", p(&out), "--state-out", p(end), "--backend", backend];
    if let Some(s) = start {
        args.extend(["--state-in", p(s)]);
    }
    let r = tttc(&args);
    assert!(r.status.success(), "{tag}: {}", String::from_utf8_lossy(&r.stderr));
    read(&out)["logits"].f32.clone()
}

/// A sequence run in pieces, each from the state the one before ended in, gives the logits of one
/// run over the whole sequence and ends in its state: split at 1, b − 1, b, b + 1 and T − 1 (in
/// a mini-batch, at its boundaries, a last piece of one token) and in three pieces, on the
/// interpreter and the CPU backend; the compiled backends on one split.
#[test]
fn chunked_runs_equal_one_run() {
    check_chunked_runs(&[("interp", Splits::All), ("cpu", Splits::All), ("cpu-model", Splits::One), ("ptx-sim", Splits::One)], "state_chunked");
}

#[test]
#[ignore = "needs a GPU"]
fn chunked_runs_equal_one_run_on_the_gpu() {
    check_chunked_runs(&[("cuda", Splits::All)], "state_chunked_cuda");
}

/// Which split points a backend runs.
#[derive(Clone, Copy, PartialEq)]
enum Splits {
    All,
    /// The one at b + 1: a piece that starts inside a mini-batch and crosses a boundary (for the
    /// backends that compile, or simulate, each run for seconds).
    One,
}

fn check_chunked_runs(backends: &[(&str, Splits)], scratch_name: &str) {
    let dir = scratch(scratch_name);
    for case in all_cases() {
        let name = case.file_name().unwrap().to_str().unwrap().to_string();
        let io = read(&case.join("io.safetensors"));
        let (ids, t, b) = (&io["input_ids"], io["input_ids"].shape[1], mini_batch(&case));
        let mut splits: Vec<Vec<usize>> = [1, b - 1, b, b + 1, t - 1].into_iter().filter(|&s| s > 0 && s < t).map(|s| vec![s]).collect();
        if b + 1 < t {
            splits.push(vec![b - 1, b + 1]);
        }
        splits.dedup();
        if splits.is_empty() {
            continue; // one token: nothing to split
        }
        let whole_state = dir.join(format!("{name}-whole-state.safetensors"));
        let whole = run_piece(&case, &dir, &format!("{name}-whole"), ids, (0, t), None, &whole_state, "interp");
        let ratio = parity_ratio(&whole, &io["logits"].f32, 1e-5);
        assert!(ratio <= 1.0, "{name}: whole run at {ratio:.2}x tolerance");
        let one = [splits.iter().find(|c| c[..] == [b + 1]).unwrap_or(&splits[0]).clone()];
        for &(backend, which) in backends.iter().filter(|(b, _)| runs_on(&case, b)) {
            let cut_sets = if which == Splits::One { &one[..] } else { &splits[..] };
            for cuts in cut_sets {
                let tag = format!("{name}-{backend}-split-{}", cuts.iter().map(|c| c.to_string()).collect::<Vec<_>>().join("-"));
                let mut bounds = vec![0];
                bounds.extend(cuts);
                bounds.push(t);
                let v = io["logits"].shape[2];
                let mut per_row: Vec<Vec<f32>> = vec![Vec::new(); ids.shape[0]];
                let mut start: Option<std::path::PathBuf> = None;
                for (k, w) in bounds.windows(2).enumerate() {
                    let end = dir.join(format!("{tag}-{k}-state.safetensors"));
                    let logits = run_piece(&case, &dir, &format!("{tag}-{k}"), ids, (w[0], w[1]), start.as_deref(), &end, backend);
                    for (r, row) in per_row.iter_mut().enumerate() {
                        let len = (w[1] - w[0]) * v;
                        row.extend_from_slice(&logits[r * len..(r + 1) * len]);
                    }
                    start = Some(end);
                }
                let chunked = per_row.concat();
                let ratio = parity_ratio(&chunked, &io["logits"].f32, 1e-5);
                assert!(ratio <= 1.0, "{tag}: logits at {ratio:.2}x tolerance");
                assert_state_matches(&read(start.as_ref().unwrap()), "", &read(&whole_state), &tag);
            }
        }
    }
}

/// `tttc grad --state-in S` on every reference case: besides the loss and the parameters'
/// gradients, OUT holds `state.NAME`, the gradient with respect to each tensor of S but the
/// position; all of them within SPEC's gradient tolerance of the same gradient graph evaluated
/// in f64 (finite differences check that graph: passes/tests/model_gradient.rs).
#[test]
fn grad_from_a_state_gives_the_state_gradients() {
    check_state_gradients(&backends(), "state_grad");
}

/// The same on a GPU (`cuda`).
#[test]
#[ignore = "needs a GPU"]
fn grad_from_a_state_gives_the_state_gradients_on_the_gpu() {
    check_state_gradients(&gpu_backends(), "state_grad_cuda");
}

fn check_state_gradients(backends: &[&str], scratch_name: &str) {
    let dir = scratch(scratch_name);
    for case in all_cases().into_iter().filter(|c| backends.iter().any(|b| runs_on(c, b))) {
        let name = case.file_name().unwrap().to_str().unwrap().to_string();
        let io = read(&case.join("io.safetensors"));
        let (ids, t, b) = (&io["input_ids"], io["input_ids"].shape[1], mini_batch(&case));
        if t < 3 {
            continue; // a state needs a first piece, and a gradient a second of two tokens
        }
        let cut = (b + 3).min(t - 2);
        let start = dir.join(format!("{name}-start.safetensors"));
        run_piece(&case, &dir, &format!("{name}-first"), ids, (0, cut), None, &start, "interp");
        let rows = ids.shape[0];
        let piece: Vec<i64> = (0..rows).flat_map(|r| ids.i64[r * t + cut..(r + 1) * t].to_vec()).collect();
        let input = dir.join(format!("{name}-second-in.safetensors"));
        write_raw(&input, &[("input_ids".into(), Dtype::I64, vec![rows, t - cut], i64_bytes(&piece))]);

        // The reference: the gradient graph of the resumed run in f64.
        let model = tttc_frontends::load(&case, None).unwrap();
        let state: Vec<(String, tttc_ir::Tensor)> =
            read(&start).into_iter().map(|(n, a)| (n, tttc_ir::Tensor::f64(a.shape, a.f32.iter().map(|&x| x as f64).collect()))).collect();
        let position = state.iter().find(|(n, _)| n == "position").unwrap().1.to_f64().unwrap()[0] as usize;
        let resumed = tttc_passes::expand_grads(&tttc_frontends::build_for(&model.config, Mode::Resume { position }).unwrap().g).unwrap();
        let wrt: Vec<String> = state.iter().filter(|(n, _)| n != "position").map(|(n, _)| format!("state.{n}")).collect();
        let graph = tttc_passes::gradient_graph_wrt(&resumed, "loss", 1, &wrt.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
        let ids_t = tttc_ir::Tensor::i64(vec![rows, t - cut], piece.clone());
        let weights: std::collections::BTreeMap<String, tttc_ir::Tensor> =
            model.weights.iter().map(|(n, w)| (n.clone(), tttc_ir::Tensor::f64(w.shape.clone(), w.to_f64().unwrap()))).collect();
        let args: Vec<&tttc_ir::Tensor> = graph
            .args
            .iter()
            .map(|a| match a.kind {
                tttc_ir::ArgKind::Param => &weights[&a.name],
                tttc_ir::ArgKind::Input if a.name == "input_ids" => &ids_t,
                tttc_ir::ArgKind::Input => &state.iter().find(|(n, _)| format!("state.{n}") == a.name).unwrap().1,
            })
            .collect();
        let want: Vec<(String, Vec<f32>)> = graph
            .outputs
            .iter()
            .zip(tttc_ir::run(&graph, &args, tttc_ir::Precision::F64).unwrap())
            .map(|((n, _), t)| (n.clone(), t.to_f32().unwrap()))
            .collect();

        for backend in backends.iter().copied().filter(|b| runs_on(&case, b)) {
            let out = dir.join(format!("{name}-{backend}-grad.safetensors"));
            let r = tttc(&["grad", p(&case), "--input", p(&input), "--output", p(&out), "--state-in", p(&start), "--backend", backend]);
            assert!(r.status.success(), "{name} ({backend}): {}", String::from_utf8_lossy(&r.stderr));
            let got = read(&out);
            assert_eq!(got.len(), want.len(), "{name} ({backend}): outputs {:?}", got.keys().collect::<Vec<_>>());
            for n in &wrt {
                assert!(got.contains_key(n), "{name} ({backend}): no gradient {n}");
            }
            for (n, w) in &want {
                let rtol = if n == "loss" { 1e-5 } else { 1e-4 };
                assert_eq!(got[n].f32.len(), w.len(), "{name} ({backend}): {n}");
                let ratio = parity_ratio(&got[n].f32, w, rtol);
                assert!(ratio <= 1.0, "{name} ({backend}): {n} at {ratio:.2}x tolerance");
            }
        }
    }
}
