//! LaCT's language model beyond the reference cases' logits and gradients (reference_vectors.rs,
//! gradients.rs): `pad_token_id`, untied and tied.

mod common;
use common::*;

/// With `pad_token_id` set, that embedding row gets no gradient from the lookup (PyTorch's
/// `padding_idx`) and nothing else changes: the loss and every other gradient stay the
/// reference's.
#[test]
fn the_pad_token_row_gets_no_gradient() {
    let case = &lact_cases()[0];
    let dir = scratch("lact_pad_token");
    let io = read(&case.join("io.safetensors"));
    let pad = io["input_ids"].i64[3];
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(case.join("config.json")).unwrap()).unwrap();
    config["pad_token_id"] = pad.into();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::copy(case.join("model.safetensors"), dir.join("model.safetensors")).unwrap();
    let out = dir.join("grads.safetensors");
    let r = tttc(&["grad", p(&dir), "--input", p(&case.join("io.safetensors")), "--output", p(&out)]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let (got, want) = (read(&out), read(&case.join("grads.safetensors")));
    assert!(parity_ratio(&got["loss"].f32, &io["loss"].f32, 1e-5) <= 1.0);
    let embedding = "model.embeddings.weight";
    let width = want[embedding].shape[1];
    let row = pad as usize * width..(pad as usize + 1) * width;
    assert!(want[embedding].f32[row.clone()].iter().any(|&g| g != 0.0), "the reference's row {pad} has a gradient");
    assert!(got[embedding].f32[row.clone()].iter().all(|&g| g == 0.0), "row {pad} of d/d{embedding} is not zero");
    for (name, reference) in &want {
        let mut reference = reference.f32.clone();
        if name == embedding {
            reference[row.clone()].fill(0.0);
        }
        let ratio = parity_ratio(&got[name].f32, &reference, 1e-4);
        assert!(ratio <= 1.0, "d/d{name} at {ratio:.2}x tolerance");
    }
}

/// With a tied embedding the head's gradient still reaches the pad row (PyTorch's `padding_idx`
/// stops only the lookup's): the row's gradient changes but stays non-zero, and every other
/// gradient is the one without `pad_token_id`.
#[test]
fn a_tied_head_still_reaches_the_pad_row() {
    let case = repo().join("tests/vectors-lact-switches/lact-tied-fractional");
    let dir = scratch("lact_pad_token_tied");
    let io = read(&case.join("io.safetensors"));
    let pad = io["input_ids"].i64[2];
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(case.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["tie_word_embeddings"], true);
    config["pad_token_id"] = pad.into();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::copy(case.join("model.safetensors"), dir.join("model.safetensors")).unwrap();
    let grads = |model: &std::path::Path, tag: &str| {
        let out = dir.join(format!("{tag}.safetensors"));
        let r = tttc(&["grad", p(model), "--input", p(&case.join("io.safetensors")), "--output", p(&out)]);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        read(&out)
    };
    let (with_pad, without) = (grads(&dir, "with-pad"), grads(&case, "without"));
    let embedding = "model.embeddings.weight";
    let width = without[embedding].shape[1];
    let row = pad as usize * width..(pad as usize + 1) * width;
    let (a, b) = (&with_pad[embedding].f32[row.clone()], &without[embedding].f32[row.clone()]);
    assert!(a.iter().any(|&g| g != 0.0), "the head's gradient reaches row {pad}");
    assert!(a.iter().zip(b).any(|(x, y)| (x - y).abs() > 1e-6), "the lookup's gradient left row {pad}");
    for (name, reference) in &without {
        let (mut got, mut want) = (with_pad[name].f32.clone(), reference.f32.clone());
        if name == embedding {
            got[row.clone()].fill(0.0);
            want[row.clone()].fill(0.0);
        }
        let ratio = parity_ratio(&got, &want, 1e-5);
        assert!(ratio <= 1.0, "d/d{name} at {ratio:.2}x tolerance");
    }
}
