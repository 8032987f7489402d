//! `tttc compile` and `tttc ir --after`: the output folder (IR after every pass, manifest), the
//! pass names, and clean failures.

mod common;
use common::*;

use std::path::Path;

use serde_json::Value;

fn pass_names() -> Vec<&'static str> {
    tttc_passes::pass_names()
}

/// Reads and checks one IR file of a compile output: it parses, verifies and prints back the same.
fn check_ir(path: &Path) -> tttc_ir::Graph {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let g = tttc_ir::text::parse(&text).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
    tttc_ir::verify(&g).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
    assert_eq!(tttc_ir::text::print(&g), text, "{}: printing is not stable", path.display());
    g
}

fn u(v: &Value, what: &str) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("{what} is not an unsigned integer: {v}"))
}

fn no_temp_dirs(dir: &Path) {
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with(".tttc-") || n.contains(".tmp-"))
        .collect();
    assert!(left.is_empty(), "temporary folders left in {}: {left:?}", dir.display());
}

#[test]
fn compile_writes_the_ir_after_every_pass_and_the_manifest() {
    let dir = scratch("compile_examples");
    for ex in examples() {
        let stem = ex.file_stem().unwrap().to_string_lossy().to_string();
        let out = dir.join(format!("{stem}.tttc"));
        let r = tttc(&["compile", p(&ex), "-o", p(&out), "--seq-len", "100", "--batch", "2", "--no-ptxas"]);
        let stderr = String::from_utf8_lossy(&r.stderr);
        assert!(r.status.success(), "{stem}: {stderr}");
        // One progress line per pass (the passes' notes indented under it), the fusion summary,
        // the training step's gradient graph, for Llama a note that it has no decoding entry
        // points (its KV cache grows), the CPU model (a line per entry point, then the time), the
        // GPU model (a line per program, unassembled with --no-ptxas: tests/ptx_assembly.rs
        // assembles them), then where the output went.
        let family = tttc_frontends::load_config(&ex).unwrap().family();
        let decodes = family != "llama";
        let entry_names: &[&str] = if decodes { &["forward", "loss_and_grad", "prefill", "step"] } else { &["forward", "loss_and_grad"] };
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.starts_with("    ")).collect();
        let n = pass_names().len();
        assert!(lines.len() >= n + 5, "{stem}: {stderr}");
        for (line, name) in lines.iter().zip(pass_names()) {
            assert!(line.starts_with(name) && line.contains("nodes"), "{stem}: {line}");
        }
        let summary = lines[n];
        assert!(summary.starts_with("fusion: ") && summary.contains("regions") && summary.ends_with("at B=2, T=100"), "{stem}: {summary}");
        assert!(lines[n + 1].starts_with("loss_and_grad: "), "{stem}: {stderr}");
        let at = n + 2 + usize::from(!decodes);
        assert_eq!(lines[n + 2].starts_with("note: no prefill or step entry points"), !decodes, "{stem}: {stderr}");
        let cpu = lines[at..].iter().take_while(|l| l.starts_with("cpu: ")).count();
        assert_eq!(cpu, entry_names.len() + 1, "{stem}: {stderr}");
        let gpu = &lines[at + cpu..lines.len() - 1];
        assert!(gpu.iter().all(|l| l.starts_with("gpu: ") && !l.contains("ptxas")), "{stem}: {stderr}");
        assert_eq!(gpu.len(), entry_names.len(), "{stem}: a GPU program per entry point: {stderr}");
        assert_eq!(lines.last().unwrap(), &format!("wrote {}", out.display()));
        for target in ["sm_80", "sm_90"] {
            let ptx = std::fs::read_to_string(out.join(format!("gpu/{target}.ptx"))).unwrap();
            assert!(ptx.contains(&format!(".target {target}")) && ptx.contains(".visible .entry"), "{stem}: gpu/{target}.ptx");
        }

        // The IR as built and after each pass, in order.
        let input = check_ir(&out.join("ir/00-input.ir"));
        assert!(input == tttc_frontends::load_structure(&ex).unwrap().g, "{stem}: 00-input.ir is not the frontend's graph");
        let mut graphs = vec![input];
        for (i, name) in pass_names().iter().enumerate() {
            graphs.push(check_ir(&out.join(format!("ir/{:02}-{name}.ir", i + 1))));
        }
        let expected = tttc_passes::run_pipeline(&graphs[0], None).unwrap();
        for (i, r) in expected.iter().enumerate() {
            assert!(graphs[i + 1] == r.graph, "{stem}: the IR after {} is not the pass's graph", r.name);
        }
        let files: Vec<_> = std::fs::read_dir(out.join("ir")).unwrap().collect();
        assert_eq!(files.len(), pass_names().len() + 1, "{stem}: unexpected files in ir/");

        let m: Value = serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(m["tttc_version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(m["model"]["path"], p(&ex));
        assert_eq!(m["model"]["model_type"], family, "{stem}");
        let params: u64 = graphs[0].params().map(|a| graphs[0].ty(a.value).shape.iter().map(|d| d.as_const().unwrap() as u64).product::<u64>()).sum();
        assert_eq!(u(&m["model"]["parameters"], "parameters"), params, "{stem}");
        assert_eq!(u(&m["model"]["parameter_bytes"], "parameter_bytes"), 4 * params, "{stem}");
        assert_eq!(m["shapes"], serde_json::json!({"B": 2, "T": 100}));
        assert_eq!(m["input"]["ir"], "ir/00-input.ir");
        assert_eq!(u(&m["input"]["nodes"], "input nodes"), tttc_passes::count_nodes(&graphs[0]) as u64);

        // The compiled model: an object file exporting the functions the header declares, each
        // taking its graph's arguments at the compiled sizes (tests/compiled_model.rs runs them).
        let cpu = &m["cpu"];
        let header = std::fs::read_to_string(out.join(cpu["header"].as_str().unwrap())).unwrap();
        let object = std::fs::read(out.join(cpu["object"].as_str().unwrap())).unwrap();
        assert_eq!(&object[..4], b"\x7fELF", "{stem}: the object file is not ELF");
        let entries = cpu["entries"].as_array().unwrap();
        let names: Vec<&str> = entries.iter().map(|e| e["name"].as_str().unwrap()).collect();
        assert_eq!(names, entry_names, "{stem}");
        let graph_args: Vec<&str> = graphs.last().unwrap().args.iter().map(|a| a.name.as_str()).collect();
        for e in entries {
            assert!(u(&e["kernels"], "cpu kernels") > 0, "{stem}: no CPU kernels");
            let symbol = e["symbol"].as_str().unwrap();
            assert_eq!(symbol, format!("tttc_{}", e["name"].as_str().unwrap()));
            assert!(header.contains(&format!("int32_t {symbol}(")), "{stem}: {symbol} not declared");
            assert!(object.windows(symbol.len()).any(|w| w == symbol.as_bytes()), "{stem}: {symbol} not in the object");
            let workspace = format!("#define {}_WORKSPACE_BYTES {}u", symbol.to_uppercase(), u(&e["workspace_bytes"], "workspace"));
            assert!(header.contains(&workspace), "{stem}: {workspace}");
        }
        // The forward entry's FLOPs counted on its schedule agree with the graph's estimate (the
        // same products, reductions and elementwise ops, counted independently).
        let (scheduled, estimated) =
            (u(&entries[0]["flops"], "flops") as f64, u(&m["passes"].as_array().unwrap().last().unwrap()["totals"]["flops"], "flops") as f64);
        assert!((scheduled / estimated - 1.0).abs() < 0.02, "{stem}: scheduled {scheduled} FLOPs, estimated {estimated}");
        assert!(u(&entries[0]["bytes_moved"], "bytes_moved") > 0, "{stem}");
        for e in &entries[..2] {
            let args: Vec<&str> = e["args"].as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap()).collect();
            assert_eq!(args, graph_args, "{stem}: {} takes the forward pass's arguments", e["name"]);
            assert_eq!(e["args"][0]["shape"], serde_json::json!(["B", "T"]), "{stem}: input_ids of any B and T");
        }
        // One object serves every B up to --batch and T up to --seq-len.
        assert_eq!(m["cpu"]["lengths"], serde_json::json!([{"name": "B", "max": 2}, {"name": "T", "max": 100}]), "{stem}");
        assert!(
            header.contains("TTTC_LENGTH_NAMES[] = {\"B\", \"T\", 0}") && header.contains("TTTC_MAX_LENGTHS[] = {2, 100, 0}"),
            "{stem}: the header's lengths"
        );
        // The training step: the loss, then a gradient per parameter, named as the parameter.
        let grads: Vec<&str> = entries[1]["outputs"].as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap()).collect();
        let params: Vec<&str> = graphs[0].params().map(|a| a.name.as_str()).collect();
        assert_eq!(grads[0], "loss", "{stem}");
        assert_eq!(grads[1..].iter().collect::<std::collections::BTreeSet<_>>(), params.iter().collect(), "{stem}");
        // Decoding: the prefill takes a prompt of T tokens, the step one token; both give the
        // last position's logits, then the state, which the step takes back as its arguments 1..
        // (same names, order and shapes), before the weights. The GPU programs have the same slots.
        if decodes {
            let (prefill, step) = (&entries[2], &entries[3]);
            let vocab = &entries[0]["outputs"][0]["shape"][2];
            assert_eq!(prefill["args"][0]["shape"], serde_json::json!(["B", "T"]), "{stem}: the prompt of any B and T");
            assert_eq!(step["args"][0]["shape"], serde_json::json!(["B", 1]), "{stem}: one token per row");
            for e in [prefill, step] {
                assert_eq!(e["args"][0]["name"], "input_ids", "{stem}");
                assert_eq!(e["outputs"][0], serde_json::json!({"name": "logits", "dtype": "f32", "shape": ["B", 1, vocab]}), "{stem}");
            }
            let state = &step["outputs"].as_array().unwrap()[1..];
            assert!(!state.is_empty() && state.iter().all(|s| s["name"].as_str().unwrap().starts_with("state.")), "{stem}: {state:?}");
            assert_eq!(&prefill["outputs"].as_array().unwrap()[1..], state, "{stem}: the prefill hands over the step's state");
            let step_args = step["args"].as_array().unwrap();
            assert_eq!(&step_args[1..=state.len()], state, "{stem}: the step takes the state it gives");
            for a in prefill["args"].as_array().unwrap()[1..].iter().chain(&step_args[state.len() + 1..]) {
                assert!(params.contains(&a["name"].as_str().unwrap()), "{stem}: {a} is not a weight");
            }
            // The GPU programs take the same lengths, up to the same bounds.
            for (program, e) in [("gpu_prefill", prefill), ("gpu_step", step)] {
                let gpu = &m[program];
                assert_eq!((&gpu["args"], &gpu["outputs"]), (&e["args"], &e["outputs"]), "{stem}: {program}'s slots");
                // Its lengths: those its arguments' shapes name, with the CPU object's bounds.
                let named: std::collections::BTreeSet<&str> =
                    e["args"].as_array().unwrap().iter().flat_map(|a| a["shape"].as_array().unwrap().iter().filter_map(Value::as_str)).collect();
                let wanted: Vec<&Value> = m["cpu"]["lengths"].as_array().unwrap().iter().filter(|l| named.contains(l["name"].as_str().unwrap())).collect();
                assert_eq!(gpu["lengths"].as_array().unwrap().iter().collect::<Vec<_>>(), wanted, "{stem}: {program}'s lengths");
                for file in gpu["modules"].as_object().unwrap().values().chain([&gpu["program"]]) {
                    assert!(out.join(file.as_str().unwrap()).is_file(), "{stem}: {file}");
                }
            }
        } else {
            assert!(m.get("gpu_prefill").is_none() && m.get("gpu_step").is_none(), "{stem}: decoding programs of a state that grows");
        }
        // --no-ptxas: no program was assembled, so none has figures or an estimate.
        for program in ["gpu", "gpu_loss_and_grad", "gpu_prefill", "gpu_step"].into_iter().filter(|p| m.get(p).is_some()) {
            assert!(m[program]["ptxas"].is_null() && m[program]["estimate"].is_null(), "{stem}: {program} was assembled");
        }

        let passes = m["passes"].as_array().unwrap();
        assert_eq!(passes.len(), pass_names().len());
        let about: Vec<&str> = tttc_passes::pipeline().iter().map(|p| p.about).collect();
        let mut nodes = u(&m["input"]["nodes"], "input nodes");
        for (i, entry) in passes.iter().enumerate() {
            assert_eq!(entry["name"], pass_names()[i]);
            assert_eq!(entry["about"], about[i]);
            assert_eq!(entry["ir"], format!("ir/{:02}-{}.ir", i + 1, pass_names()[i]));
            assert!(entry["seconds"].as_f64().is_some_and(|s| s >= 0.0), "{stem}: seconds");
            assert_eq!(u(&entry["nodes_before"], "nodes_before"), nodes, "{stem}: {}", pass_names()[i]);
            nodes = u(&entry["nodes_after"], "nodes_after");
            assert_eq!(nodes, tttc_passes::count_nodes(&graphs[i + 1]) as u64);
            for key in ["flops", "bytes_moved", "intermediate_bytes"] {
                assert!(u(&entry["totals"][key], key) > 0, "{stem}: {key}");
            }
            assert_eq!(u(&entry["totals"]["unestimated_nodes"], "unestimated"), 0, "{stem}");
        }

        // Regions: every top-level fused region and scan of the final graph, in node order, then
        // the rest; they add up to the total.
        let last = graphs.last().unwrap();
        let regions = m["regions"].as_array().unwrap();
        let scans = last.nodes.iter().filter(|n| matches!(n.op, tttc_ir::Op::Scan(_))).count();
        let fused = last.nodes.iter().filter(|n| matches!(n.op, tttc_ir::Op::Fused(_))).count();
        assert!(fused > 0, "{stem}: no fused region");
        assert_eq!(regions.len(), fused + scans + 1, "{stem}");
        let other = regions.last().unwrap();
        assert_eq!(other["kind"], "other");
        assert_eq!(u(&other["nodes"], "nodes") as usize, last.nodes.len() - scans - fused);
        let total = &passes.last().unwrap()["totals"];
        for key in ["flops", "bytes_moved", "intermediate_bytes"] {
            let sum: u64 = regions.iter().map(|r| u(&r[key], key)).sum();
            assert_eq!(sum, u(&total[key], key), "{stem}: regions' {key}");
        }
        let positions: Vec<u64> = regions[..fused + scans].iter().map(|r| u(&r["node"], "node")).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{stem}: regions not in node order");
        for r in regions[..fused + scans].iter().filter(|r| r["kind"] == "fused") {
            let node = &last.nodes[u(&r["node"], "node") as usize];
            let tttc_ir::Op::Fused(f) = &node.op else { panic!("{stem}: region is not a fused node") };
            assert_eq!(r["body"], f.body.name.as_str());
            assert_eq!(u(&r["nodes"], "nodes") as usize, f.body.nodes.len());
            let counted: u64 = r["ops"].as_object().unwrap().values().map(|c| u(c, "op count")).sum();
            assert_eq!(counted as usize, f.body.nodes.len(), "{stem}: op counts");
            let shown: Vec<String> = node.inputs.iter().map(|v| last.ty(*v).to_string()).collect();
            assert_eq!(r["inputs"], serde_json::json!(shown));
            let shown: Vec<String> = node.outputs.iter().map(|v| last.ty(*v).to_string()).collect();
            assert_eq!(r["outputs"], serde_json::json!(shown));
        }
        // Fusion: top-level nodes before (the graph the fuse pass received) and after, and fewer
        // materialised bytes.
        let fuse_at = pass_names().iter().position(|&n| n == "fuse").expect("a fuse pass");
        let fusion = &m["fusion"];
        assert_eq!(u(&fusion["regions_before"], "regions_before") as usize, graphs[fuse_at].nodes.len(), "{stem}");
        assert_eq!(u(&fusion["regions_after"], "regions_after") as usize, last.nodes.len(), "{stem}");
        assert_eq!(u(&fusion["fused_regions"], "fused_regions") as usize, fused);
        assert_eq!(u(&fusion["scans"], "scans") as usize, scans);
        assert_eq!(u(&fusion["plain_nodes"], "plain_nodes") as usize, last.nodes.len() - fused - scans);
        let before = u(&fusion["intermediate_bytes_before"], "intermediate_bytes_before");
        let after = u(&fusion["intermediate_bytes_after"], "intermediate_bytes_after");
        assert_eq!(before, u(&passes[fuse_at - 1]["totals"]["intermediate_bytes"], "totals"), "{stem}");
        assert_eq!(after, u(&total["intermediate_bytes"], "totals"), "{stem}");
        assert!(after < before, "{stem}: fusion does not reduce intermediates ({before} -> {after})");
        assert!(u(&fusion["scan_body_intermediate_bytes"], "scan bytes") < after, "{stem}");
        assert!(u(&fusion["bytes_moved_after"], "moved") < u(&fusion["bytes_moved_before"], "moved"), "{stem}");
        for r in regions[..fused + scans].iter().filter(|r| r["kind"] == "scan") {
            let node = &last.nodes[u(&r["node"], "node") as usize];
            let tttc_ir::Op::Scan(scan) = &node.op else { panic!("{stem}: region is not a scan") };
            assert_eq!(u(&r["chunk"], "chunk") as usize, scan.chunk);
            // T = 100: ⌈100 / chunk⌉ iterations (Mamba scans chunk 1, TTT mini-batches 16).
            assert_eq!(u(&r["iterations"], "iterations") as usize, 100usize.div_ceil(scan.chunk));
            let shown: Vec<String> = node.inputs.iter().map(|v| last.ty(*v).to_string()).collect();
            assert_eq!(r["inputs"], serde_json::json!(shown));
            assert_eq!(r["outputs"].as_array().unwrap().len(), node.outputs.len());
            assert!(u(&r["flops"], "flops") > 0);
        }
        if family != "llama" {
            assert_eq!(scans, graphs[0].nodes.iter().filter(|n| n.op.name() == "scan").count(), "{stem}: one region per layer");
            assert!(scans > 0, "{stem}: no scan region");
        }
    }
    no_temp_dirs(&dir);
}

#[test]
fn compile_defaults_to_the_model_stem_in_the_current_folder_and_replaces_only_its_own_output() {
    let dir = scratch("compile_default");
    let ex = repo().join("examples/mamba-tiny.toml");
    // Where no ptxas is found, the compile says so and leaves the PTX unassembled.
    let run = || {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tttc"));
        command.args(["compile", p(&ex)]).current_dir(&dir).env_remove("TTTC_PTXAS").env("PATH", "");
        command.output().unwrap()
    };
    let r = run();
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{stderr}");
    assert!(stderr.lines().any(|l| l.starts_with("note: ptxas not found")), "{stderr}");
    let out = dir.join("mamba-tiny.tttc");
    let m: Value = serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["shapes"], serde_json::json!({"B": 1, "T": 2048}));
    // A file the compile did not write is named, and the folder kept as it is.
    std::fs::write(out.join("stale.txt"), "old").unwrap();
    let r = run();
    assert!(!r.status.success() && String::from_utf8_lossy(&r.stderr).contains("holds stale.txt, which tttc compile did not write"));
    assert_eq!(std::fs::read_to_string(out.join("stale.txt")).unwrap(), "old");
    // Without it, a second compile replaces the first output.
    std::fs::remove_file(out.join("stale.txt")).unwrap();
    let r = run();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(out.join("manifest.json").exists());
    no_temp_dirs(&dir);
}

/// A failing compile: one-line error containing `needle`, non-zero exit, no panic.
fn expect_error(args: &[&str], needle: &str) {
    let r = tttc(args);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success(), "expected failure for {args:?}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "error is not one line: {stderr}");
    assert!(stderr.starts_with("error: ") && stderr.contains(needle), "{needle:?} not in: {stderr}");
}

/// `expect_error`, allowing progress lines on stderr before the error line.
fn expect_final_error(args: &[&str], needle: &str) {
    let r = tttc(args);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success(), "expected failure for {args:?}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let last = stderr.trim_end().lines().last().unwrap_or_default();
    assert!(last.starts_with("error: ") && last.contains(needle), "{needle:?} not in: {stderr}");
    assert_eq!(stderr.matches("error").count(), 1, "{stderr}");
}

#[test]
fn compile_into_a_missing_folder_fails_cleanly() {
    let dir = scratch("compile_missing_parent");
    let ex = repo().join("examples/ttt-linear-tiny.toml");
    let out = dir.join("no/such/folder/out.tttc");
    expect_final_error(&["compile", p(&ex), "-o", p(&out), "--no-ptxas"], "folder");
    assert!(!dir.join("no").exists());
    no_temp_dirs(&dir);
}

#[test]
fn compile_does_not_replace_a_folder_it_did_not_write() {
    let dir = scratch("compile_foreign");
    let out = dir.join("precious");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("notes.txt"), "keep me").unwrap();
    let ex = repo().join("examples/ttt-linear-tiny.toml");
    expect_error(&["compile", p(&ex), "-o", p(&out)], "not the output of tttc compile");
    assert_eq!(std::fs::read_to_string(out.join("notes.txt")).unwrap(), "keep me");
    let file = dir.join("a-file");
    std::fs::write(&file, "x").unwrap();
    expect_error(&["compile", p(&ex), "-o", p(&file)], "is not a folder");
    no_temp_dirs(&dir);
}

#[test]
fn compile_reports_bad_models_and_shapes() {
    let dir = scratch("compile_bad");
    expect_error(&["compile", p(&dir.join("missing.toml")), "-o", p(&dir.join("x"))], "missing.toml");
    assert!(!dir.join("x").exists());
    let r = tttc(&["compile", p(&repo().join("examples/llama-tiny.toml")), "--seq-len", "0"]);
    assert!(!r.status.success());
    // A layer keeps no state to resume from.
    let layer = repo().join("tests/vectors-lact/lact-bidir-sgd");
    expect_error(&["compile", p(&layer), "-o", p(&dir.join("y")), "--resume-at", "3"], "describes one layer, which keeps no state between calls");
    assert!(!dir.join("y").exists());
    no_temp_dirs(&dir);
}

#[test]
fn ir_after_a_pass_prints_that_pass_output() {
    let ex = repo().join("examples/ttt-linear-tiny.toml");
    let graph = tttc_frontends::load_structure(&ex).unwrap().g;
    let results = tttc_passes::run_pipeline(&graph, None).unwrap();
    for (i, name) in pass_names().iter().enumerate() {
        let r = tttc(&["ir", p(&ex), "--after", name]);
        assert!(r.status.success(), "{name}: {}", String::from_utf8_lossy(&r.stderr));
        let text = String::from_utf8(r.stdout).unwrap();
        let parsed = tttc_ir::text::parse(&text).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        tttc_ir::verify(&parsed).unwrap();
        assert!(parsed == results[i].graph, "--after {name}: not the graph after {name}");
    }
    // Without --after: the frontend's graph.
    let r = tttc(&["ir", p(&ex)]);
    assert!(tttc_ir::text::parse(&String::from_utf8(r.stdout).unwrap()).unwrap() == graph, "ir without --after");
}

#[test]
fn ir_after_an_unknown_pass_lists_the_passes() {
    let ex = repo().join("examples/ttt-linear-tiny.toml");
    expect_error(&["ir", p(&ex), "--after", "nonsense"], "unknown pass \"nonsense\"");
    expect_error(&["ir", p(&ex), "--after", "nonsense"], &pass_names().join(", "));
    let r = tttc(&["ir", "--help"]);
    let help = String::from_utf8(r.stdout).unwrap();
    for name in pass_names() {
        assert!(help.contains(name), "--help does not name {name}");
    }
}
