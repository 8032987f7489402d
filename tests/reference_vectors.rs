//! `tttc run` on every reference case gives logits and loss within SPEC §1's tolerance, on every
//! backend that runs here (the interpreter, native code, the model compiled ahead of time and its
//! PTX kernels in the simulator), and on a GPU where there is one.

mod common;
use common::*;

const RTOL_LOGITS: f64 = 1e-5;

#[test]
fn run_matches_every_reference_case() {
    check_every_case(&cases(), &backends(), "reference_vectors");
}

/// The gated inner optimizer's cases, the same way.
#[test]
fn run_matches_every_gated_case() {
    check_every_case(&gated_cases(), &backends(), "reference_vectors_gated");
}

/// LaCT's language-model cases, the same way.
#[test]
fn run_matches_every_lact_case() {
    check_every_case(&lact_cases(), &backends(), "reference_vectors_lact");
}

#[test]
#[ignore = "needs a GPU"]
fn cuda_matches_every_reference_case() {
    check_every_case(&all_cases(), &gpu_backends(), "reference_vectors_cuda");
}

fn check_every_case(cases: &[std::path::PathBuf], backends: &[&str], scratch_name: &str) {
    let out_dir = scratch(scratch_name);
    let mut failures = Vec::new();
    for (case, backend) in cases.iter().flat_map(|c| backends.iter().map(move |&b| (c.clone(), b))).filter(|(c, b)| runs_on(c, b)) {
        let name = format!("{} ({backend})", case.file_name().unwrap().to_str().unwrap());
        let out = out_dir.join(format!("{name}.safetensors"));
        let io = case.join("io.safetensors");
        let r = tttc(&["run", p(&case), "--input", p(&io), "--output", p(&out), "--backend", backend]);
        if !r.status.success() {
            failures.push(format!("{name}: tttc run failed: {}", String::from_utf8_lossy(&r.stderr)));
            continue;
        }
        let want = read(&io);
        let got = read(&out);
        assert_eq!(got["logits"].shape, want["logits"].shape, "{name}: logits shape");
        let logits = parity_ratio(&got["logits"].f32, &want["logits"].f32, RTOL_LOGITS);
        // A case of one token has no next-token target, so no loss.
        let loss = match want.get("loss") {
            Some(loss) => parity_ratio(&got["loss"].f32, &loss.f32, RTOL_LOGITS),
            None => 0.0,
        };
        eprintln!("{name}: logits error {logits:.3} of tolerance, loss {loss:.3}");
        if logits > 1.0 || loss > 1.0 {
            failures.push(format!("{name}: logits at {logits:.2}× tolerance, loss at {loss:.2}×"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every model is causal, so the logits of a prefix are the reference's first positions: this
/// runs sequences shorter than a mini-batch (or LaCT chunk), at its edges, and not a multiple of it.
#[test]
fn prefixes_match_the_reference() {
    let out_dir = scratch("reference_prefixes");
    for (case, backend) in all_cases().into_iter().flat_map(|c| backends().into_iter().map(move |b| (c.clone(), b))).filter(|(c, b)| runs_on(c, b)) {
        let name = format!("{}-{backend}", case.file_name().unwrap().to_str().unwrap());
        let io = read(&case.join("io.safetensors"));
        let (ids, logits) = (&io["input_ids"], &io["logits"]);
        let (b, t, v) = (ids.shape[0], ids.shape[1], logits.shape[2]);
        let mb = mini_batch(&case);
        let mut lengths = vec![1, 2, mb - 1, mb, mb + 1, 2 * mb + 3];
        lengths.retain(|&n| n >= 1 && n < t);
        lengths.dedup();
        for n in lengths {
            let cut_ids: Vec<i64> = (0..b).flat_map(|i| ids.i64[i * t..i * t + n].to_vec()).collect();
            let want: Vec<f32> = (0..b).flat_map(|i| logits.f32[i * t * v..(i * t + n) * v].to_vec()).collect();
            let input = out_dir.join(format!("{name}-{n}-in.safetensors"));
            let out = out_dir.join(format!("{name}-{n}-out.safetensors"));
            write_raw(&input, &[("input_ids".into(), safetensors::Dtype::I64, vec![b, n], i64_bytes(&cut_ids))]);
            let r = tttc(&["run", p(&case), "--input", p(&input), "--output", p(&out), "--backend", backend]);
            assert!(r.status.success(), "{name} T={n}: {}", String::from_utf8_lossy(&r.stderr));
            let ratio = parity_ratio(&read(&out)["logits"].f32, &want, RTOL_LOGITS);
            assert!(ratio <= 1.0, "{name} T={n}: logits at {ratio:.2}× tolerance");
        }
    }
}
