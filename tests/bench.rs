//! `tttc bench` at a small context: the table has a row per layer and length with positive
//! times and rates, the summary lines and the latency plot follow it, and bad options are one-line
//! errors.

mod common;
use common::*;

#[test]
fn bench_prints_a_row_per_layer_and_length() {
    let plot = scratch("bench_plot").join("latency.png");
    let r = tttc(&["bench", "--layers", "ttt-linear,mamba", "--seq-lens", "16,40", "--reps", "1", "--profile", "--plot", p(&plot)]);
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let rows: Vec<Vec<&str>> = out.lines().filter(|l| l.contains("tttc (cpu)") && l.starts_with("| ")).map(|l| l.split('|').map(str::trim).collect()).collect();
    let mut seen: Vec<(String, String)> = Vec::new();
    for row in &rows {
        // | layer | T | who | median | min | GFLOP/s | % | first |
        let median: f64 = row[4].parse().unwrap();
        let gflops: f64 = row[6].parse().unwrap();
        assert!(median > 0.0 && gflops > 0.0, "{row:?}");
        seen.push((row[1].to_string(), row[2].to_string()));
    }
    let want: Vec<(String, String)> = [("ttt-linear", "16"), ("ttt-linear", "40"), ("mamba", "16"), ("mamba", "40")].iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    assert_eq!(seen, want, "{out}");
    assert!(out.contains("Compiling the 12-layer 125m TTT-Linear") && out.contains("Gradient step"), "{out}");
    assert!(out.contains("Profile of ttt-linear at T = 16"), "{out}");
    let png = std::fs::read(&plot).expect("the latency plot");
    assert_eq!(&png[1..4], b"PNG", "not a PNG");
}

#[test]
fn bench_rejects_bad_options() {
    let r = tttc(&["bench", "--seq-lens", "0"]);
    assert!(!r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--seq-lens must be positive"), "{err}");
    let r = tttc(&["bench", "--peers", "python3"]);
    assert!(!r.status.success(), "--peers without --peer-bench must fail");
}
