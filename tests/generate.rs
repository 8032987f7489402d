//! `tttc generate`: the logits of every generated token equal those of one forward pass over the
//! final sequence (SPEC §2 "Decoding"), for every reference case, for prompts of length 1, b − 1,
//! b, b + 1 and 2b + 3 (b the TTT mini-batch, 16 otherwise) and enough new tokens to cross several
//! mini-batch boundaries, on every backend that decodes; sampling options and bad input.

mod common;
use common::*;

use std::path::Path;

/// SPEC: generated logits equal the full forward pass's within 1e-4 relative to the largest.
const RTOL_DECODE: f64 = 1e-4;

fn mini_batch(case: &Path) -> usize {
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(case.join("config.json")).unwrap()).unwrap();
    config["mini_batch_size"].as_u64().unwrap_or(16) as usize
}

fn prompt_file(dir: &Path, name: &str, rows: usize, ids: &[i64]) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.safetensors"));
    let len = ids.len() / rows;
    write_raw(&path, &[("input_ids".into(), safetensors::Dtype::I64, vec![rows, len], i64_bytes(ids))]);
    path
}

#[test]
fn generated_logits_equal_a_forward_pass_over_the_final_sequence() {
    let dir = scratch("generate_exact");
    for case in cases() {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        let io = read(&case.join("io.safetensors"));
        let ids = &io["input_ids"];
        let (rows, t) = (ids.shape[0], ids.shape[1]);
        let b = mini_batch(&case);
        let new = 2 * b + 5;
        for backend in BACKENDS {
            for len in [1, b - 1, b, b + 1, 2 * b + 3].into_iter().filter(|&n| n < t) {
                let tag = format!("{name}-{backend}-{len}");
                let prompt: Vec<i64> = (0..rows).flat_map(|r| ids.i64[r * t..r * t + len].to_vec()).collect();
                let input = prompt_file(&dir, &tag, rows, &prompt);
                let out = dir.join(format!("{tag}-out.safetensors"));
                let n = new.to_string();
                let r = tttc(&["generate", p(&case), "--prompt", p(&input), "--max-new-tokens", &n, "-o", p(&out), "--backend", backend]);
                assert!(r.status.success(), "{tag}: {}", String::from_utf8_lossy(&r.stderr));
                let got = read(&out);
                let (tokens, logits) = (&got["tokens"], &got["logits"]);
                assert_eq!(tokens.shape, vec![rows, len + new], "{tag}");
                let vocab = logits.shape[2];
                assert_eq!(logits.shape, vec![rows, new, vocab], "{tag}");
                for r in 0..rows {
                    assert_eq!(tokens.i64[r * (len + new)..r * (len + new) + len], prompt[r * len..(r + 1) * len], "{tag}: the prompt comes first");
                }

                // One forward pass over the final sequences.
                let full = dir.join(format!("{tag}-full.safetensors"));
                write_raw(&full, &[("input_ids".into(), safetensors::Dtype::I64, vec![rows, len + new], i64_bytes(&tokens.i64))]);
                let forward = dir.join(format!("{tag}-forward.safetensors"));
                let r = tttc(&["run", p(&case), "--input", p(&full), "-o", p(&forward), "--backend", backend]);
                assert!(r.status.success(), "{tag}: {}", String::from_utf8_lossy(&r.stderr));
                let all = &read(&forward)["logits"];
                let want: Vec<f32> = (0..rows).flat_map(|r| all.f32[(r * (len + new) + len - 1) * vocab..(r * (len + new) + len - 1 + new) * vocab].to_vec()).collect();
                let ratio = parity_ratio(&logits.f32, &want, RTOL_DECODE);
                assert!(ratio <= 1.0, "{tag}: generated logits at {ratio:.2}× tolerance");
                // Greedy: each token is its logits' first maximum.
                for r in 0..rows {
                    for k in 0..new {
                        let row = &logits.f32[(r * new + k) * vocab..(r * new + k + 1) * vocab];
                        let best = row.iter().enumerate().fold(0, |m, (i, &x)| if x > row[m] { i } else { m });
                        assert_eq!(tokens.i64[r * (len + new) + len + k], best as i64, "{tag}: token {k} of row {r} is not the argmax");
                    }
                }
            }
        }
    }
}

#[test]
fn sampling_is_seeded_and_top_k_one_is_greedy() {
    let dir = scratch("generate_sampling");
    let case = &cases()[0];
    let io = read(&case.join("io.safetensors"));
    let ids = &io["input_ids"];
    let t = ids.shape[1];
    let input = prompt_file(&dir, "prompt", 1, &ids.i64[..t.min(5)]);
    let run = |out: &str, extra: &[&str]| {
        let out = dir.join(out);
        let mut args = vec!["generate", p(case), "--prompt", p(&input), "--max-new-tokens", "12", "-o", p(&out)];
        args.extend_from_slice(extra);
        let r = tttc(&args);
        assert!(r.status.success(), "{extra:?}: {}", String::from_utf8_lossy(&r.stderr));
        read(&out)["tokens"].i64.clone()
    };
    let greedy = run("greedy.safetensors", &[]);
    assert_eq!(run("k1.safetensors", &["--temperature", "1.5", "--top-k", "1", "--seed", "3"]), greedy, "top-k 1 samples the argmax");
    let hot = ["--temperature", "5", "--seed", "7"];
    let a = run("a.safetensors", &hot);
    assert_eq!(run("b.safetensors", &hot), a, "the same seed gives the same tokens");
    let c = run("c.safetensors", &["--temperature", "5", "--seed", "8"]);
    assert_ne!(a, c, "another seed gives other tokens at a high temperature");
    assert_ne!(a, greedy, "a high temperature departs from greedy decoding");
    let nucleus = run("p.safetensors", &["--temperature", "5", "--top-p", "0.000001", "--seed", "9"]);
    assert_eq!(nucleus, greedy, "a tiny top-p keeps only the likeliest token");
}

#[test]
fn generate_rejects_bad_input() {
    let dir = scratch("generate_errors");
    let case = &cases()[0];
    let input = prompt_file(&dir, "prompt", 1, &[1, 2, 3]);
    let bad_id = prompt_file(&dir, "bad", 1, &[1, 100_000]);
    let out = dir.join("out.safetensors");
    let cases: [(&[&str], &str); 6] = [
        (&["--max-new-tokens", "3", "--backend", "cpu-model"], "generate runs on cpu or interp"),
        (&["--max-new-tokens", "0"], "at least 1"),
        (&["--max-new-tokens", "3", "--top-p", "1.5"], "--top-p"),
        (&["--max-new-tokens", "3", "--top-k", "0"], "--top-k"),
        (&["--max-new-tokens", "3", "--temperature=-1"], "temperature"),
        (&["--max-new-tokens", "3", "--prompt-text", "hi"], "cannot be used with"),
    ];
    for (extra, want) in cases {
        let mut args = vec!["generate", p(case), "--prompt", p(&input), "-o", p(&out)];
        args.extend_from_slice(extra);
        let r = tttc(&args);
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success(), "{extra:?} must fail");
        assert!(err.contains(want), "{extra:?}: {err}");
        assert!(!out.exists(), "{extra:?}: no output on error");
    }
    let r = tttc(&["generate", p(case), "--prompt", p(&bad_id), "--max-new-tokens", "2", "-o", p(&out)]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && err.contains("outside the vocabulary") && err.trim().lines().count() == 1, "{err}");
    let r = tttc(&["generate", p(case), "--prompt-text", "hello", "--max-new-tokens", "2", "-o", p(&out)]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && err.contains("needs a model with a tokenizer"), "{err}");
    assert!(!out.exists());
}
