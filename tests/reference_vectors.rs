//! `tttc run` on every reference case gives logits and loss within SPEC §1's tolerance.

mod common;
use common::*;

const RTOL_LOGITS: f64 = 1e-5;

#[test]
fn run_matches_every_reference_case() {
    let out_dir = scratch("reference_vectors");
    let mut failures = Vec::new();
    for case in cases() {
        let name = case.file_name().unwrap().to_str().unwrap().to_string();
        let out = out_dir.join(format!("{name}.safetensors"));
        let io = case.join("io.safetensors");
        let r = tttc(&["run", p(&case), "--input", p(&io), "--output", p(&out)]);
        if !r.status.success() {
            failures.push(format!("{name}: tttc run failed: {}", String::from_utf8_lossy(&r.stderr)));
            continue;
        }
        let want = read(&io);
        let got = read(&out);
        assert_eq!(got["logits"].shape, want["logits"].shape, "{name}: logits shape");
        let logits = parity_ratio(&got["logits"].f32, &want["logits"].f32, RTOL_LOGITS);
        let loss = parity_ratio(&got["loss"].f32, &want["loss"].f32, RTOL_LOGITS);
        eprintln!("{name}: logits error {logits:.3} of tolerance, loss {loss:.3}");
        if logits > 1.0 || loss > 1.0 {
            failures.push(format!("{name}: logits at {logits:.2}× tolerance, loss at {loss:.2}×"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
