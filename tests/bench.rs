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
    let want: Vec<(String, String)> =
        [("ttt-linear", "16"), ("ttt-linear", "40"), ("mamba", "16"), ("mamba", "40")].iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    assert_eq!(seen, want, "{out}");
    assert!(out.contains("Compiling the 12-layer 125m TTT-Linear") && out.contains("Gradient step"), "{out}");
    assert!(out.contains("Profile of ttt-linear at T = 16"), "{out}");
    let png = std::fs::read(&plot).expect("the latency plot");
    assert_eq!(&png[1..4], b"PNG", "not a PNG");
}

#[test]
fn bench_decode_prints_per_token_latency_against_the_floor() {
    let r = tttc(&["bench", "--decode", "--layers", "ttt-linear,attention", "--depths", "1", "--contexts", "16,1000", "--decode-tokens", "2"]);
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(out.starts_with("memory read bandwidth on "), "{out}");
    let rows: Vec<Vec<&str>> = out.lines().filter(|l| l.contains("tttc (cpu)")).map(|l| l.split('|').map(str::trim).collect()).collect();
    let seen: Vec<(&str, &str)> = rows.iter().map(|r| (r[1], r[3])).collect();
    assert_eq!(seen, [("TTT-Linear", "16"), ("TTT-Linear", "1000"), ("Llama", "16"), ("Llama", "1000")], "{out}");
    for row in &rows {
        // | model | layers | context | who | median | min | tokens/s | MB | floor | × floor |
        let (median, floor, ratio): (f64, f64, f64) = (row[5].parse().unwrap(), row[9].parse().unwrap(), row[10].parse().unwrap());
        assert!(median > 0.0 && floor > 0.0 && (ratio - median / floor).abs() < 0.02 * ratio + 0.01, "{row:?}");
    }
    // Llama's KV cache grows with the context; TTT's state does not.
    let mb = |i: usize| rows[i][8].parse::<f64>().unwrap();
    assert_eq!(mb(0), mb(1), "TTT reads the same bytes at any context");
    assert!(mb(3) > mb(2), "Llama reads its growing cache");
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

/// The packed benchmark: one row per model, the tokens counted once, the speeds consistent
/// with the times; its JSON lines carry the same lengths.
#[test]
fn bench_packed_compares_packed_and_padded_batches() {
    let json = scratch("bench_packed").join("packed.jsonl");
    let r = tttc(&[
        "bench",
        "--packed",
        "--layers",
        "ttt-linear,mamba",
        "--depths",
        "1",
        "--packed-sequences",
        "3",
        "--packed-lengths",
        "5,30",
        "--reps",
        "1",
        "-o",
        p(&json),
    ]);
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let rows: Vec<Vec<&str>> =
        out.lines().filter(|l| l.starts_with("| TTT") || l.starts_with("| Mamba")).map(|l| l.split('|').map(str::trim).collect()).collect();
    assert_eq!(rows.iter().map(|r| r[1]).collect::<Vec<_>>(), ["TTT-Linear", "Mamba"], "{out}");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&json).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    for (row, line) in rows.iter().zip(&lines) {
        // | model | packed ms | padded ms | packed tokens/s | padded tokens/s | speed |
        let lengths: Vec<u64> = line["lengths"].as_array().unwrap().iter().map(|l| l.as_u64().unwrap()).collect();
        assert_eq!(lengths.len(), 3);
        assert!(lengths.iter().all(|&l| (5..=30).contains(&l)), "{lengths:?}");
        let tokens = lengths.iter().sum::<u64>() as f64;
        let (packed_ms, padded_ms, packed_tps): (f64, f64, f64) = (row[2].parse().unwrap(), row[3].parse().unwrap(), row[4].parse().unwrap());
        assert!(packed_ms > 0.0 && padded_ms > 0.0, "{row:?}");
        assert!((packed_tps - tokens / (packed_ms / 1e3)).abs() <= 0.01 * packed_tps + 1.0, "{row:?}");
    }
}
