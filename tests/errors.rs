//! Bad input gets a one-line error naming the problem, a non-zero exit, and no output file (an
//! existing OUT is left untouched).

mod common;
use common::*;

use safetensors::Dtype;
use std::path::Path;

const CASE: &str = "ttt-linear-transformer-backbone";

/// Runs `tttc run` expecting failure; checks the error is one line containing `needle`, that
/// nothing panicked, and that the pre-existing OUT was not touched.
fn expect_error(model: &Path, input: &Path, extra: &[&str], needle: &str) {
    // OUT goes next to the model in the test's own folder (a model folder's parent is shared by
    // every test, which run in parallel).
    let dir = if model.is_dir() { model.to_path_buf() } else { model.parent().unwrap().to_path_buf() };
    let out = dir.join("out.safetensors");
    std::fs::write(&out, b"previous contents").unwrap();
    let mut args = vec!["run", p(model), "--input", p(input), "--output", p(&out)];
    args.extend_from_slice(extra);
    let r = tttc(&args);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success(), "expected failure for {needle:?}, got success");
    assert!(!stderr.contains("panicked"), "panic instead of an error: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "error is not one line: {stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains(needle), "error does not mention {needle:?}: {stderr}");
    assert_eq!(std::fs::read(&out).unwrap(), b"previous contents", "OUT was modified");
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with(".tttc-") || n.contains(".tmp")
        })
        .collect();
    assert!(leftovers.is_empty(), "temporary files left behind");
}

fn edit_weights(dir: &Path, f: impl FnOnce(&mut Vec<RawTensor>)) {
    let path = dir.join("model.safetensors");
    let mut t = read_raw(&path);
    f(&mut t);
    write_raw(&path, &t);
}

fn write_ids(path: &Path, dtype: Dtype, shape: Vec<usize>, data: Vec<u8>) {
    write_raw(path, &[("input_ids".to_string(), dtype, shape, data)]);
}

#[test]
fn missing_tensor() {
    let dir = copy_case(CASE, "err_missing");
    edit_weights(&dir, |t| t.retain(|x| x.0 != "model.layers.1.seq_modeling_block.W1"));
    expect_error(&dir, &dir.join("io.safetensors"), &[], "missing tensor model.layers.1.seq_modeling_block.W1");
}

#[test]
fn misnamed_tensor() {
    let dir = copy_case(CASE, "err_misnamed");
    edit_weights(&dir, |t| {
        let x = t.iter_mut().find(|x| x.0 == "model.norm.weight").unwrap();
        x.0 = "model.final_norm.weight".into();
    });
    expect_error(&dir, &dir.join("io.safetensors"), &[], "missing tensor model.norm.weight (unexpected: model.final_norm.weight)");
}

#[test]
fn wrong_shape() {
    let dir = copy_case(CASE, "err_shape");
    edit_weights(&dir, |t| {
        let x = t.iter_mut().find(|x| x.0 == "model.layers.0.mlp.up_proj.weight").unwrap();
        x.2 = vec![64, 128];
    });
    expect_error(&dir, &dir.join("io.safetensors"), &[], "tensor model.layers.0.mlp.up_proj.weight has shape [64, 128], expected [128, 64]");
}

#[test]
fn wrong_weight_dtype() {
    let dir = copy_case(CASE, "err_dtype");
    edit_weights(&dir, |t| {
        let x = t.iter_mut().find(|x| x.0 == "model.norm.weight").unwrap();
        x.1 = Dtype::I32;
    });
    expect_error(&dir, &dir.join("io.safetensors"), &[], "model.norm.weight has unsupported dtype I32");
}

#[test]
fn float_input_ids() {
    let dir = copy_case(CASE, "err_ids_dtype");
    let input = dir.join("in.safetensors");
    write_ids(&input, Dtype::F32, vec![1, 2], vec![0; 8]);
    expect_error(&dir, &input, &[], "input_ids must hold i64 token ids");
}

#[test]
fn token_id_out_of_vocabulary() {
    let dir = copy_case(CASE, "err_vocab");
    let input = dir.join("in.safetensors");
    write_ids(&input, Dtype::I64, vec![1, 3], i64_bytes(&[1, 97, 2]));
    expect_error(&dir, &input, &[], "input_ids[0, 1] = 97 is outside the vocabulary 0..97");
}

#[test]
fn negative_token_id() {
    let dir = copy_case(CASE, "err_negative");
    let input = dir.join("in.safetensors");
    write_ids(&input, Dtype::I64, vec![1, 2], i64_bytes(&[-1, 2]));
    expect_error(&dir, &input, &[], "input_ids[0, 0] = -1 is outside the vocabulary");
}

#[test]
fn empty_sequence() {
    let dir = copy_case(CASE, "err_t0");
    let input = dir.join("in.safetensors");
    write_ids(&input, Dtype::I64, vec![1, 0], vec![]);
    expect_error(&dir, &input, &[], "sequence length T = 0");
}

#[test]
fn empty_batch() {
    let dir = copy_case(CASE, "err_b0");
    let input = dir.join("in.safetensors");
    write_ids(&input, Dtype::I64, vec![0, 4], vec![]);
    expect_error(&dir, &input, &[], "batch size B = 0");
}

#[test]
fn input_ids_of_wrong_rank() {
    let dir = copy_case(CASE, "err_rank");
    let input = dir.join("in.safetensors");
    write_ids(&input, Dtype::I64, vec![3], i64_bytes(&[1, 2, 3]));
    expect_error(&dir, &input, &[], "input_ids must have shape [B, T]");
}

#[test]
fn no_input_ids() {
    let dir = copy_case(CASE, "err_no_ids");
    let input = dir.join("in.safetensors");
    write_raw(&input, &[("tokens".to_string(), Dtype::I64, vec![1, 2], i64_bytes(&[1, 2]))]);
    expect_error(&dir, &input, &[], "has no tensor input_ids");
}

#[test]
fn truncated_weights() {
    let dir = copy_case(CASE, "err_truncated");
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    expect_error(&dir, &dir.join("io.safetensors"), &[], "is not a valid safetensors file");
}

#[test]
fn truncated_input() {
    let dir = copy_case(CASE, "err_truncated_input");
    let input = dir.join("io.safetensors");
    let bytes = std::fs::read(&input).unwrap();
    std::fs::write(&input, &bytes[..5]).unwrap();
    expect_error(&dir, &input, &[], "io.safetensors is not a valid safetensors file");
}

#[test]
fn unknown_model_type() {
    let dir = copy_case(CASE, "err_model_type");
    let cfg = std::fs::read_to_string(dir.join("config.json")).unwrap().replace("\"model_type\": \"ttt\"", "\"model_type\": \"gpt2\"");
    std::fs::write(dir.join("config.json"), cfg).unwrap();
    expect_error(&dir, &dir.join("io.safetensors"), &[], "unknown model_type \"gpt2\"");
}

#[test]
fn unknown_ttt_layer_type() {
    let dir = copy_case(CASE, "err_layer_type");
    let cfg = std::fs::read_to_string(dir.join("config.json")).unwrap().replace("\"ttt_layer_type\": \"linear\"", "\"ttt_layer_type\": \"conv\"");
    std::fs::write(dir.join("config.json"), cfg).unwrap();
    expect_error(&dir, &dir.join("io.safetensors"), &[], "unknown ttt_layer_type \"conv\"");
}

#[test]
fn unsupported_llama_keys() {
    let dir = copy_case("llama", "err_rope_scaling");
    let cfg = std::fs::read_to_string(dir.join("config.json"))
        .unwrap()
        .replace("\"rope_scaling\": null", "\"rope_scaling\": {\"type\": \"linear\", \"factor\": 2.0}");
    std::fs::write(dir.join("config.json"), cfg).unwrap();
    expect_error(&dir, &dir.join("io.safetensors"), &[], "rope_scaling");
}

#[test]
fn tied_head_that_differs() {
    let dir = copy_case(CASE, "err_tied_head");
    edit_weights(&dir, |t| {
        let mut head = t.iter().find(|x| x.0 == "model.embed_tokens.weight").unwrap().clone();
        head.0 = "lm_head.weight".into();
        head.3[0] ^= 1;
        t.push(head);
    });
    expect_error(&dir, &dir.join("io.safetensors"), &[], "lm_head.weight differs from the embedding");
}

#[test]
fn malformed_model_toml() {
    let dir = scratch("err_toml_syntax");
    let model = dir.join("model.toml");
    std::fs::write(&model, "model_type = \"ttt\"\n[config\nhidden_size = 64\n").unwrap();
    let input = dir.join("in.safetensors");
    write_ids(&input, Dtype::I64, vec![1, 2], i64_bytes(&[1, 2]));
    expect_error(&model, &input, &[], "malformed model.toml");
}

#[test]
fn model_toml_missing_key() {
    let dir = scratch("err_toml_key");
    let model = dir.join("model.toml");
    std::fs::write(&model, "model_type = \"llama\"\n[config]\nvocab_size = 10\nhidden_size = 8\n").unwrap();
    let input = dir.join("in.safetensors");
    write_ids(&input, Dtype::I64, vec![1, 2], i64_bytes(&[1, 2]));
    expect_error(&model, &input, &[], "config key num_attention_heads is missing");
}

#[test]
fn model_toml_wrong_type() {
    let dir = scratch("err_toml_type");
    let model = dir.join("model.toml");
    std::fs::write(&model, "model_type = \"mamba\"\n[config]\nvocab_size = 10\nhidden_size = \"big\"\nnum_hidden_layers = 1\n").unwrap();
    let input = dir.join("in.safetensors");
    write_ids(&input, Dtype::I64, vec![1, 2], i64_bytes(&[1, 2]));
    expect_error(&model, &input, &[], "config key hidden_size must be a non-negative integer");
}

#[test]
fn missing_model() {
    let dir = scratch("err_no_model");
    let input = dir.join("in.safetensors");
    write_ids(&input, Dtype::I64, vec![1, 2], i64_bytes(&[1, 2]));
    expect_error(&dir.join("nothing-here"), &input, &[], "does not exist");
}

/// `--backend cuda` on a machine without the CUDA driver says so in one line and writes nothing;
/// where there is a GPU the run succeeds and its logits match the reference (the full check
/// over every case is `cuda_matches_every_reference_case`).
#[test]
fn cuda_backend_without_a_gpu_says_so() {
    let dir = copy_case(CASE, "cuda_backend");
    let io = dir.join("io.safetensors");
    let out = dir.join("cuda.safetensors");
    let r = tttc(&["run", p(&dir), "--input", p(&io), "--output", p(&out), "--backend", "cuda"]);
    if r.status.success() {
        let ratio = parity_ratio(&read(&out)["logits"].f32, &read(&io)["logits"].f32, 1e-5);
        assert!(ratio <= 1.0, "cuda logits at {ratio:.2}x tolerance");
    } else {
        expect_error(&dir, &io, &["--backend", "cuda"], "--backend cuda: no");
    }
}

/// A packed batch's `cu_seqlens` that does not describe `input_ids`: one line each, nothing written.
#[test]
fn bad_cu_seqlens() {
    let dir = copy_case(CASE, "bad_cu_seqlens");
    let ids: Vec<i64> = (0..10).map(|i| i % 7).collect();
    for (k, (cu, rows, needle)) in [
        (vec![1i64, 4, 10], 1, "cu_seqlens must start at 0"),
        (vec![0, 4, 4, 10], 1, "strictly increasing"),
        (vec![0, 6, 4, 10], 1, "strictly increasing"),
        (vec![0, 4, 9], 1, "must end at the 10 tokens"),
        (vec![0, 5], 2, "input_ids must be one row"),
        (vec![0], 1, "N ≥ 1"),
    ]
    .into_iter()
    .enumerate()
    {
        let input = dir.join(format!("packed-{k}.safetensors"));
        write_raw(
            &input,
            &[("input_ids".into(), Dtype::I64, vec![rows, 10 / rows], i64_bytes(&ids)), ("cu_seqlens".into(), Dtype::I64, vec![cu.len()], i64_bytes(&cu))],
        );
        expect_error(&dir, &input, &[], needle);
    }
}

/// The state `tttc run --state-out` writes after `rows` sequences of `len` tokens.
fn saved_state(case: &Path, dir: &Path, tag: &str, rows: usize, len: usize) -> Vec<RawTensor> {
    let ids: Vec<i64> = (0..rows * len).map(|i| (i as i64 * 3) % 7).collect();
    let (input, out, state) =
        (dir.join(format!("{tag}-in.safetensors")), dir.join(format!("{tag}-out.safetensors")), dir.join(format!("{tag}-state.safetensors")));
    write_ids(&input, Dtype::I64, vec![rows, len], i64_bytes(&ids));
    let r = tttc(&["run", p(case), "--input", p(&input), "--output", p(&out), "--state-out", p(&state)]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    read_raw(&state)
}

/// A state file that does not fit the model or the input (`--state-in`): one line each, nothing
/// written (neither OUT nor the `--state-out` file).
#[test]
fn bad_state_files() {
    let dir = copy_case(CASE, "bad_state");
    let good = saved_state(&dir, &dir, "good", 2, 5);
    let other_model = saved_state(&repo().join("tests/vectors/mamba"), &dir, "mamba", 2, 5);
    let f32_bytes = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
    let with = |f: &dyn Fn(&mut Vec<RawTensor>)| {
        let mut s = good.clone();
        f(&mut s);
        s
    };
    let w1 = "model.layers.0.seq_modeling_block.W1";
    let ids: Vec<i64> = (0..8).map(|i| i % 7).collect();
    let (two_rows, one_row) = (dir.join("two-rows.safetensors"), dir.join("one-row.safetensors"));
    write_ids(&two_rows, Dtype::I64, vec![2, 4], i64_bytes(&ids));
    write_ids(&one_row, Dtype::I64, vec![1, 8], i64_bytes(&ids));
    let cases: Vec<(Vec<RawTensor>, &Path, String)> = vec![
        (with(&|s| s.retain(|t| t.0 != "position")), &two_rows, "the state has no position".into()),
        (with(&|s| s.iter_mut().find(|t| t.0 == "position").unwrap().3 = f32_bytes(&[2.5])), &two_rows, "whole number of tokens".into()),
        (with(&|s| s.iter_mut().find(|t| t.0 == "position").unwrap().3 = f32_bytes(&[16.0])), &two_rows, "position 16 is outside a mini-batch of 16".into()),
        (
            with(&|s| {
                let t = s.iter_mut().find(|t| t.0 == w1).unwrap();
                t.2[2] -= 1;
                t.3.truncate(t.2.iter().product::<usize>() * 4);
            }),
            &two_rows,
            format!("state {w1} has shape"),
        ),
        (good.clone(), &one_row, format!("state {w1} is for a batch of 2, input_ids has B = 1")),
        (
            with(&|s| s.push(("extra".into(), Dtype::F32, vec![1], f32_bytes(&[0.0])))),
            &two_rows,
            "the state holds extra, which this model has no state of".into(),
        ),
        (
            with(&|s| {
                let t = s.iter_mut().find(|t| t.0 == w1).unwrap();
                t.1 = Dtype::I64;
                t.3.truncate(t.3.len() / 2 / 8 * 8);
                t.2 = vec![t.3.len() / 8];
            }),
            &two_rows,
            format!("state {w1} must be f32"),
        ),
        (other_model.clone(), &two_rows, "is it another model's state?".into()),
    ];
    for (k, (state, input, needle)) in cases.into_iter().enumerate() {
        let (file, saved) = (dir.join(format!("bad-{k}.safetensors")), dir.join(format!("bad-{k}-out-state.safetensors")));
        write_raw(&file, &state);
        expect_error(&dir, input, &["--state-in", p(&file), "--state-out", p(&saved)], &needle);
        assert!(!saved.exists(), "{needle}: a state was written");
    }

    // Packed batches: one state per sequence, `seq.{i}.NAME`.
    let packed = dir.join("packed.safetensors");
    write_raw(&packed, &[("input_ids".into(), Dtype::I64, vec![1, 8], i64_bytes(&ids)), ("cu_seqlens".into(), Dtype::I64, vec![3], i64_bytes(&[0, 3, 8]))]);
    let one = saved_state(&dir, &dir, "one", 1, 5);
    let prefixed = |i: usize| one.iter().map(|(n, dt, s, d)| (format!("seq.{i}.{n}"), *dt, s.clone(), d.clone())).collect::<Vec<_>>();
    for (k, (state, needle)) in [
        (one.clone(), "each tensor seq.{i}.NAME, got"),
        (prefixed(0), "no tensors for sequence 1"),
        ([prefixed(0), prefixed(1), prefixed(2)].concat(), "but the batch has 2 sequences"),
    ]
    .into_iter()
    .enumerate()
    {
        let file = dir.join(format!("bad-packed-{k}.safetensors"));
        write_raw(&file, &state);
        expect_error(&dir, &packed, &["--state-in", p(&file)], needle);
    }
}
