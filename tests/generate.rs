//! `tttc generate`: the logits of every generated token equal those of one forward pass over the
//! final sequence (SPEC §2 "Decoding"), for every reference case, for prompts of length 1, b − 1,
//! b, b + 1 and 2b + 3 (b the TTT mini-batch, 16 otherwise) and enough new tokens to cross several
//! mini-batch boundaries, on every backend (and a GPU where there is one); sampling options and
//! bad input.

mod common;
use common::*;

use std::path::Path;

/// SPEC: generated logits equal the full forward pass's within 1e-4 relative to the largest.
const RTOL_DECODE: f64 = 1e-4;

fn prompt_file(dir: &Path, name: &str, rows: usize, ids: &[i64]) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.safetensors"));
    let len = ids.len() / rows;
    write_raw(&path, &[("input_ids".into(), safetensors::Dtype::I64, vec![rows, len], i64_bytes(ids))]);
    path
}

#[test]
fn generated_logits_equal_a_forward_pass_over_the_final_sequence() {
    check_decoding(&backends(), "generate_exact");
}

#[test]
#[ignore = "needs a GPU"]
fn cuda_generated_logits_equal_a_forward_pass_over_the_final_sequence() {
    check_decoding(&gpu_backends(), "generate_exact_cuda");
}

fn check_decoding(backends: &[&str], scratch_name: &str) {
    let dir = scratch(scratch_name);
    for case in all_cases() {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        let io = read(&case.join("io.safetensors"));
        let ids = &io["input_ids"];
        let (rows, t) = (ids.shape[0], ids.shape[1]);
        let b = mini_batch(&case);
        for &backend in backends.iter().filter(|b| runs_on(&case, b)) {
            // The simulator runs every thread of every kernel: one prompt there, ending past a
            // mini-batch (or chunk) boundary, and a few new tokens crossing the next.
            let (lengths, new): (&[usize], usize) = if backend == "ptx-sim" { (&[2 * b - 3], 5) } else { (&[1, b - 1, b, b + 1, 2 * b + 3], 2 * b + 5) };
            for len in lengths.iter().copied().filter(|&n| n >= 1 && n < t) {
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
                let want: Vec<f32> =
                    (0..rows).flat_map(|r| all.f32[(r * (len + new) + len - 1) * vocab..(r * (len + new) + len - 1 + new) * vocab].to_vec()).collect();
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

/// `tttc generate --state-in S`: a prompt that continues the sequence a saved state ended (inside
/// a mini-batch) generates the tokens, with the logits, that the whole sequence as one prompt does.
#[test]
fn generation_continues_a_saved_state() {
    let dir = scratch("generate_state_in");
    for case in all_cases() {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        let io = read(&case.join("io.safetensors"));
        let ids = &io["input_ids"];
        let (rows, t) = (ids.shape[0], ids.shape[1]);
        let b = mini_batch(&case);
        let (first, len, new) = ((b - 1).min(t - 1), (b + 2).min(t), b + 3);
        if first == 0 {
            continue; // one token: nothing to split
        }
        let take = |from: usize, to: usize| -> Vec<i64> { (0..rows).flat_map(|r| ids.i64[r * t + from..r * t + to].to_vec()).collect() };
        for backend in backends().into_iter().filter(|b| runs_on(&case, b)) {
            let tag = format!("{name}-{backend}");
            // The simulator's steps are slow: its new tokens stop short of the next boundary
            // (the prompt from the state crosses one).
            let new = if backend == "ptx-sim" { 3 } else { new };
            let n = new.to_string();
            let (whole, whole_out) = (prompt_file(&dir, &format!("{tag}-whole"), rows, &take(0, len)), dir.join(format!("{tag}-whole-out.safetensors")));
            let r = tttc(&["generate", p(&case), "--prompt", p(&whole), "--max-new-tokens", &n, "-o", p(&whole_out), "--backend", backend]);
            assert!(r.status.success(), "{tag}: {}", String::from_utf8_lossy(&r.stderr));
            let (head, head_out, state) = (
                prompt_file(&dir, &format!("{tag}-head"), rows, &take(0, first)),
                dir.join(format!("{tag}-head-out.safetensors")),
                dir.join(format!("{tag}-state.safetensors")),
            );
            let r = tttc(&["run", p(&case), "--input", p(&head), "-o", p(&head_out), "--state-out", p(&state), "--backend", backend]);
            assert!(r.status.success(), "{tag}: {}", String::from_utf8_lossy(&r.stderr));
            let (rest, rest_out) = (prompt_file(&dir, &format!("{tag}-rest"), rows, &take(first, len)), dir.join(format!("{tag}-rest-out.safetensors")));
            let r =
                tttc(&["generate", p(&case), "--prompt", p(&rest), "--state-in", p(&state), "--max-new-tokens", &n, "-o", p(&rest_out), "--backend", backend]);
            assert!(r.status.success(), "{tag}: {}", String::from_utf8_lossy(&r.stderr));
            let (want, got) = (read(&whole_out), read(&rest_out));
            assert_eq!(got["tokens"].shape, vec![rows, len - first + new], "{tag}: the prompt piece and the new tokens");
            for r in 0..rows {
                let (w, g) = (
                    &want["tokens"].i64[r * (len + new) + len..(r + 1) * (len + new)],
                    &got["tokens"].i64[r * (len - first + new) + len - first..(r + 1) * (len - first + new)],
                );
                assert_eq!(w, g, "{tag}: row {r}'s new tokens");
            }
            let ratio = parity_ratio(&got["logits"].f32, &want["logits"].f32, RTOL_DECODE);
            assert!(ratio <= 1.0, "{tag}: logits at {ratio:.2}× tolerance");
        }
    }
}

/// Generates `new` tokens after `prompt` and checks their logits against a forward pass over the
/// final sequence (one row).
fn check_against_forward(model: &Path, dir: &Path, tag: &str, prompt: &[i64], new: usize) {
    let input = prompt_file(dir, tag, 1, prompt);
    let out = dir.join(format!("{tag}-out.safetensors"));
    let r = tttc(&["generate", p(model), "--prompt", p(&input), "--max-new-tokens", &new.to_string(), "-o", p(&out)]);
    assert!(r.status.success(), "{tag}: {}", String::from_utf8_lossy(&r.stderr));
    let got = read(&out);
    let full = prompt_file(dir, &format!("{tag}-full"), 1, &got["tokens"].i64);
    let forward = dir.join(format!("{tag}-forward.safetensors"));
    let r = tttc(&["run", p(model), "--input", p(&full), "-o", p(&forward)]);
    assert!(r.status.success(), "{tag}: {}", String::from_utf8_lossy(&r.stderr));
    let all = &read(&forward)["logits"];
    let vocab = all.shape[2];
    let want = &all.f32[(prompt.len() - 1) * vocab..(prompt.len() - 1 + new) * vocab];
    let ratio = parity_ratio(&got["logits"].f32, want, RTOL_DECODE);
    assert!(ratio <= 1.0, "{tag}: generated logits at {ratio:.2}× tolerance");
}

/// Convolutions of kernel 1 carry no window; TTT with a mini-batch of 1 hands over after every
/// token; LaCT with a window of one position (no cache), pre-norm without momentum and chunks of
/// 3, and with chunks of 1, low-rank weights of another height than width and no window (a
/// cache that grows); a model folder with another kind of tokenizer still generates from ids.
#[test]
fn edge_configurations_decode_exactly() {
    let dir = scratch("generate_edges");
    let models = [
        ("mamba-k1", "model_type = \"mamba\"\nseed = 1\n[config]\nvocab_size = 64\nhidden_size = 32\nnum_hidden_layers = 2\nstate_size = 8\nconv_kernel = 1\n"),
        ("ttt-k1-b1", "model_type = \"ttt\"\nseed = 2\n[config]\nvocab_size = 64\nhidden_size = 32\nnum_attention_heads = 2\nintermediate_size = 64\nnum_hidden_layers = 2\nmini_batch_size = 1\npre_conv = true\nconv_kernel = 1\n"),
        ("ttt-mlp-b4", "model_type = \"ttt\"\nseed = 3\n[config]\nvocab_size = 64\nhidden_size = 32\nnum_attention_heads = 2\nintermediate_size = 64\nnum_hidden_layers = 1\nmini_batch_size = 4\nttt_layer_type = \"mlp\"\nshare_qk = true\nuse_gate = true\n"),
        ("lact-w1-prenorm-c3", "model_type = \"lact_swiglu\"\nseed = 4\n[config]\nvocab_size = 64\nhidden_size = 16\nnum_hidden_layers = 2\nnum_attn_heads = 2\nnum_lact_heads = 2\nlact_chunk_size = 3\nwindow_size = 1\nttt_prenorm = true\nuse_momentum = false\n"),
    ];
    for (name, toml) in models {
        let model = dir.join(format!("{name}.toml"));
        std::fs::write(&model, toml).unwrap();
        check_against_forward(&model, &dir, name, &[3, 1, 4, 1, 5, 9, 2], 9);
    }
    // A null window is JSON's alone (TOML has no null): a folder.
    let unbounded = dir.join("lact-c1-lowrank-unbounded");
    std::fs::create_dir_all(&unbounded).unwrap();
    let config = r#"{"model_type": "lact_swiglu", "vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 1, "num_attn_heads": 2, "num_lact_heads": 2, "lact_chunk_size": 1, "window_size": null, "inter_multi": 1.5, "w0_w2_low_rank": 2}"#;
    std::fs::write(unbounded.join("config.json"), config).unwrap();
    check_against_forward(&unbounded, &dir, "lact-c1-lowrank-unbounded", &[3, 1, 4, 1, 5, 9, 2], 9);
    // A reference case with a tokenizer.json of another kind: ids work, text is refused.
    let case = &cases()[0];
    let folder = dir.join("foreign-tokenizer");
    std::fs::create_dir_all(&folder).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(case.join(f), folder.join(f)).unwrap();
    }
    std::fs::write(folder.join("tokenizer.json"), r#"{"model": {"type": "BPE"}}"#).unwrap();
    check_against_forward(&folder, &dir, "foreign", &[5, 6, 7], 4);
    let out = dir.join("text.safetensors");
    let r = tttc(&["generate", p(&folder), "--prompt-text", "hi", "--max-new-tokens", "2", "-o", p(&out)]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && err.contains("not a byte tokenizer") && !out.exists(), "{err}");
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
        (&["--max-new-tokens", "18446744073709551615"], "at most"),
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
    assert!(!r.status.success() && err.contains("needs a model with the byte tokenizer"), "{err}");
    assert!(!out.exists());
}
