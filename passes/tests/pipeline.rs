//! The default pipeline on real models: snapshots of the IR after each pass for the tiny
//! TTT-Linear, TTT-MLP, Mamba and Llama examples, and a numeric check that the passes do not
//! change what the graphs compute.

mod common;
use common::*;

use tttc_ir::{Graph, Op, Precision, Tensor};

/// The IR of a tiny example as built and after each pass. Review changes: the snapshots show
/// what each pass does to a real model (for TTT, the scan body is where the inner gradient and
/// the dual form live).
fn ir_after_each_pass(example: &str) {
    let g = tttc_frontends::load_structure(&examples().join(format!("{example}.toml"))).unwrap().g;
    let stem = example.replace('-', "_");
    insta::assert_snapshot!(format!("{stem}_00_input"), tttc_ir::text::print(&g));
    for (i, r) in tttc_passes::run_pipeline(&g, None).unwrap().iter().enumerate() {
        let text = tttc_ir::text::print(&r.graph);
        // What is snapshotted must be what the graph is.
        assert!(tttc_ir::text::parse(&text).unwrap() == r.graph, "{}: the IR does not parse back to the graph", r.name);
        insta::assert_snapshot!(format!("{stem}_{:02}_{}", i + 1, r.name.replace('-', "_")), text);
    }
}

#[test]
fn ttt_linear_tiny_ir_after_each_pass() {
    ir_after_each_pass("ttt-linear-tiny");
}

#[test]
fn ttt_mlp_tiny_ir_after_each_pass() {
    ir_after_each_pass("ttt-mlp-tiny");
}

#[test]
fn mamba_tiny_ir_after_each_pass() {
    ir_after_each_pass("mamba-tiny");
}

#[test]
fn llama_tiny_ir_after_each_pass() {
    ir_after_each_pass("llama-tiny");
}

fn has_grad(g: &Graph) -> bool {
    g.nodes.iter().any(|n| matches!(n.op, Op::Grad(_)) || n.op.body().is_some_and(has_grad))
}

/// Runs a graph of `model` on `ids` with the model's (seeded) weights.
fn execute(g: &Graph, model: &tttc_frontends::Model, ids: &Tensor) -> Vec<Tensor> {
    let args: Vec<&Tensor> = g.args.iter().map(|a| if a.name == "input_ids" { ids } else { &model.weights[&a.name] }).collect();
    tttc_ir::run(g, &args, Precision::F32).unwrap()
}

/// max |a − b| ≤ 1e-6 · max |a|, per output.
fn assert_close(what: &str, want: &[Tensor], got: &[Tensor]) {
    assert_eq!(want.len(), got.len(), "{what}: number of outputs");
    for (i, (a, b)) in want.iter().zip(got).enumerate() {
        assert_eq!(a.shape, b.shape, "{what}: output {i} shape");
        let (a, b) = (a.to_f32().unwrap(), b.to_f32().unwrap());
        let scale = a.iter().fold(0f32, |m, x| m.max(x.abs()));
        let err = a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(err <= 1e-6 * scale, "{what}: output {i} differs by {err} (scale {scale})");
    }
}

/// Every stage of the pipeline that the interpreter can run (the input graph unless it holds
/// `grad` ops, which only `inner-autodiff` gives a meaning to; every stage after that) computes
/// the same logits and loss, on seeded weights and token ids that leave a shorter last TTT
/// mini-batch (T = 21, mini-batch 16).
#[test]
fn the_pipeline_preserves_what_every_tiny_example_computes() {
    for path in tiny_examples() {
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        let model = tttc_frontends::load(&path, None).unwrap();
        let vocab = model.config.vocab_size() as i64;
        let (b, t) = (2, 21);
        let ids = Tensor::i64(vec![b, t], (0..(b * t) as i64).map(|i| (i * 37 + 11) % vocab).collect());

        let input = &model.builder.g;
        let results = tttc_passes::run_pipeline(input, None).unwrap();
        let mut stages: Vec<(&str, &Graph)> = vec![("input", input)];
        stages.extend(results.iter().map(|r| (r.name, &r.graph)));
        assert!(!has_grad(stages.last().unwrap().1), "{name}: grad ops survive the pipeline");

        let runnable: Vec<&(&str, &Graph)> = stages.iter().filter(|(_, g)| !has_grad(g)).collect();
        // Without grad ops the input itself is the reference; with them, the first stage after
        // their expansion (tests/autodiff.rs checks expanded gradients against finite
        // differences, and the root reference-vector tests the whole pipeline against PyTorch).
        assert!(runnable.len() >= 2, "{name}: nothing to compare");
        let reference = execute(runnable[0].1, &model, &ids);
        assert_eq!(reference[0].shape, vec![b, t, vocab as usize], "{name}: logits");
        assert!(reference[0].to_f32().unwrap().iter().all(|x| x.is_finite()), "{name}: logits not finite");
        let names: Vec<&str> = runnable.iter().map(|(n, _)| *n).collect();
        eprintln!("{name}: compared {}", names.join(", "));
        for (stage, g) in &runnable[1..] {
            let got = execute(g, &model, &ids);
            assert_close(&format!("{name} after {stage} vs {}", runnable[0].0), &reference, &got);
        }
    }
}
