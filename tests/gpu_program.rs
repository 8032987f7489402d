//! The GPU launch contract (docs/gpu-model.md) is enough to run a model: an integrator's reading
//! of `tttc compile`'s files — manifest.json, gpu/program.json and gpu/sm_80.ptx, nothing of
//! tttc's code — launches the kernels in the PTX simulator at lengths below the bounds they were
//! compiled for (every size in the program evaluated from those lengths) and gets the reference
//! logits, on a sequence that ends inside a mini-batch; compiled with `--resume-at`, continues a sequence
//! from a saved state; runs the training step's program (reverse scans) to the reference
//! loss and gradients; and decodes with the prefill's and the step's programs, handing the state
//! from one call to the next, to the tokens and logits the CPU generates. A compiled layer's
//! forward and backward programs give its reference output and gradients.

mod common;
use common::*;

use serde_json::Value;
use tttc_ptx::model::Device;
use tttc_ptx_sim::SimDevice;

/// Follows docs/gpu-model.md, "Running the program".
struct Integrator<'a> {
    program: &'a Value,
    kernel_index: std::collections::HashMap<String, usize>,
    status: u64,
    /// The lengths of this run by name, and where the device holds them.
    lengths: std::collections::HashMap<String, i64>,
    lengths_at: u64,
}

impl Integrator<'_> {
    /// A size of the program: a number, or a C expression of the lengths (`"T"`,
    /// `"((T+15)/16)"`) evaluated at this run's.
    fn size(&self, v: &Value) -> u64 {
        match v.as_u64() {
            Some(n) => n,
            None => {
                let text = v.as_str().unwrap_or_else(|| panic!("a size: {v}"));
                let mut expr = Expr { text: text.as_bytes(), at: 0, lengths: &self.lengths };
                let n = expr.sum();
                assert_eq!(expr.at, text.len(), "{text}: unparsed from {}", expr.at);
                u64::try_from(n).unwrap()
            }
        }
    }

    /// Launches `l` unless its grid is empty at this run's lengths.
    fn launch(&self, dev: &mut SimDevice, l: &Value, pointer: &dyn Fn(&Value) -> u64) {
        let grid: [u32; 3] = std::array::from_fn(|i| self.size(&l["grid"][i]) as u32);
        if grid.contains(&0) {
            return;
        }
        let block: [u32; 3] = std::array::from_fn(|i| l["block"][i].as_u64().unwrap() as u32);
        let params: Vec<u64> = l["params"].as_array().unwrap().iter().map(|p| if p.get("lengths").is_some() { self.lengths_at } else { pointer(p) }).collect();
        dev.launch(self.kernel_index[l["kernel"].as_str().unwrap()], grid, block, &params).unwrap();
    }

    fn call(&self, dev: &mut SimDevice, f: usize, args: &[u64], outs: &[u64], ws: u64) {
        let func = &self.program["functions"][f];
        let buffers = func["buffers"].as_array().unwrap();
        let address = |mut b: usize| -> u64 {
            let mut at = 0;
            loop {
                let home = &buffers[b]["home"];
                if let Some(a) = home["alias"].as_u64() {
                    b = a as usize;
                    continue;
                }
                if let Some(v) = home["view"].as_u64() {
                    at += self.size(&home["at_bytes"]);
                    b = v as usize;
                    continue;
                }
                return at
                    + match (home["arg"].as_u64(), home["output"].as_u64(), home["workspace"].as_u64()) {
                        (Some(j), _, _) => args[j as usize],
                        (_, Some(j), _) => outs[j as usize],
                        (_, _, Some(offset)) => ws + offset,
                        _ => panic!("buffer {b} has no home"),
                    };
            }
        };
        let bytes = |b: usize| -> u64 {
            if buffers[b]["dtype"] == "f32" {
                4
            } else {
                8
            }
        };
        for step in func["steps"].as_array().unwrap() {
            if let Some(l) = step.get("launch") {
                let scratch = ws + func["arena_bytes"].as_u64().unwrap();
                let pointer = |p: &Value| {
                    if p.get("status").is_some() {
                        self.status
                    } else if p.get("scratch").is_some() {
                        scratch
                    } else {
                        address(p["buffer"].as_u64().unwrap() as usize)
                    }
                };
                self.launch(dev, l, &pointer);
                continue;
            }
            let s = &step["scan"];
            let n = |v: &Value| v.as_u64().unwrap() as usize;
            let (full, axis) = (self.size(&s["full"]) as usize, n(&s["axis"]));
            let tail = s["tail"].as_object().map(|t| (n(&t["function"]), self.size(&t["count"]) as usize));
            let iterations = full + tail.map_or(0, |t| t.1);
            let reverse = s["reverse"].as_bool().unwrap();
            for i in 0..iterations {
                // Iteration i works on chunk k: in order, or from the last when reversed.
                let k = if reverse { iterations - 1 - i } else { i };
                let (body, is_tail) = if k < full { (n(&s["body"]), false) } else { (tail.unwrap().0, true) };
                // A piece of a sequence or output: k·per positions along the axis into its buffer.
                let piece = |sl: &Value| -> u64 {
                    let b = n(&sl["buffer"]);
                    let shape: Vec<u64> = buffers[b]["shape"].as_array().unwrap().iter().map(|d| self.size(d)).collect();
                    address(b) + (k as u64) * sl["per"].as_u64().unwrap() * shape[axis + 1..].iter().product::<u64>() * bytes(b)
                };
                let copy = |dev: &mut SimDevice, sl: &Value| {
                    let l = &sl["copy"][if is_tail { "tail" } else { "full" }];
                    let (at, staging) = (piece(sl), address(n(&sl["staging"])));
                    let pointer = |p: &Value| if p.get("staging").is_some() { staging } else { at };
                    self.launch(dev, l, &pointer);
                };
                let (mut a, mut o) = (Vec::new(), Vec::new());
                // The last iteration writes buffers[0].
                let written = (iterations - 1 - i) % 2;
                for c in s["carries"].as_array().unwrap() {
                    a.push(if i == 0 { address(n(&c["init"])) } else { address(n(&c["buffers"][1 - written])) });
                    o.push(address(n(&c["buffers"][written])));
                }
                for sl in s["seqs"].as_array().unwrap() {
                    if sl["staging"].is_null() {
                        a.push(piece(sl));
                    } else {
                        copy(dev, sl);
                        a.push(address(n(&sl["staging"])));
                    }
                }
                a.extend(s["invariants"].as_array().unwrap().iter().map(|b| address(n(b))));
                for sl in s["outputs"].as_array().unwrap() {
                    o.push(if sl["staging"].is_null() { piece(sl) } else { address(n(&sl["staging"])) });
                }
                self.call(dev, body, &a, &o, ws + func["arena_bytes"].as_u64().unwrap());
                for sl in s["outputs"].as_array().unwrap() {
                    if !sl["staging"].is_null() {
                        copy(dev, sl);
                    }
                }
            }
        }
    }
}

/// A C expression of the lengths, read by recursive descent: sums of products of numbers,
/// lengths and parenthesised expressions, with C's `/` and `%`.
struct Expr<'a> {
    text: &'a [u8],
    at: usize,
    lengths: &'a std::collections::HashMap<String, i64>,
}

impl Expr<'_> {
    fn sum(&mut self) -> i64 {
        let mut v = self.product();
        while let Some(&c @ (b'+' | b'-')) = self.text.get(self.at) {
            self.at += 1;
            let x = self.product();
            v = if c == b'+' { v + x } else { v - x };
        }
        v
    }

    fn product(&mut self) -> i64 {
        let mut v = self.atom();
        while let Some(&c @ (b'*' | b'/' | b'%')) = self.text.get(self.at) {
            self.at += 1;
            let x = self.atom();
            v = match c {
                b'*' => v * x,
                b'/' => v / x,
                _ => v % x,
            };
        }
        v
    }

    fn atom(&mut self) -> i64 {
        let start = self.at;
        match self.text[start] {
            b'(' => {
                self.at += 1;
                let v = self.sum();
                assert_eq!(self.text[self.at], b')');
                self.at += 1;
                v
            }
            b'-' => {
                self.at += 1;
                -self.atom()
            }
            _ => {
                while self.text.get(self.at).is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_') {
                    self.at += 1;
                }
                let word = std::str::from_utf8(&self.text[start..self.at]).unwrap();
                word.parse().unwrap_or_else(|_| *self.lengths.get(word).unwrap_or_else(|| panic!("no length {word}")))
            }
        }
    }
}

/// Runs the program `tttc compile` wrote to `out` and described in the manifest's entry `which`
/// (`gpu`, `gpu_loss_and_grad`) from its files alone, at the `lengths` given by name, each
/// argument slot's bytes given by `slot` (by the slot's name); returns the entry function's steps
/// and every output slot's values by name.
fn run_compiled(
    out: &std::path::Path,
    which: &str,
    lengths: &[(&str, usize)],
    slot: &dyn Fn(&str) -> Vec<u8>,
) -> (Vec<Value>, std::collections::BTreeMap<String, Vec<f32>>) {
    let manifest: Value = serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    let gpu = &manifest[which];
    let program: Value = serde_json::from_str(&std::fs::read_to_string(out.join(gpu["program"].as_str().unwrap())).unwrap()).unwrap();
    let ptx = std::fs::read_to_string(out.join(gpu["modules"]["sm_80"].as_str().unwrap())).unwrap();

    let mut dev = SimDevice::load(&ptx).unwrap();
    let kernel_index = tttc_ptx::parse(&ptx).unwrap().kernels.iter().enumerate().map(|(i, k)| (k.name.clone(), i)).collect();
    // The lengths, as the program takes them: an int64 each, in the manifest's order.
    let lengths: std::collections::HashMap<String, i64> = lengths.iter().map(|&(name, v)| (name.to_string(), v as i64)).collect();
    let mut values = Vec::new();
    for l in gpu["lengths"].as_array().unwrap() {
        let (name, max) = (l["name"].as_str().unwrap(), l["max"].as_i64().unwrap());
        let v = *lengths.get(name).unwrap_or_else(|| panic!("{which} takes the length {name}"));
        assert!((1..=max).contains(&v), "{name} = {v}: compiled up to {max}");
        values.extend(v.to_le_bytes());
    }
    let lengths_at = dev.alloc(values.len().max(8)).unwrap();
    dev.upload(lengths_at, &values).unwrap();
    let status = dev.alloc(gpu["status_bytes"].as_u64().unwrap() as usize).unwrap();
    let integrator = Integrator { program: &program, kernel_index, status, lengths, lengths_at };
    let mut args = Vec::new();
    for s in gpu["args"].as_array().unwrap() {
        let name = s["name"].as_str().unwrap();
        let bytes = slot(name);
        let expected: u64 = s["shape"].as_array().unwrap().iter().map(|d| integrator.size(d)).product::<u64>() * if s["dtype"] == "f32" { 4 } else { 8 };
        assert_eq!(bytes.len() as u64, expected, "argument {name}");
        let ptr = dev.alloc(bytes.len()).unwrap();
        dev.upload(ptr, &bytes).unwrap();
        args.push(ptr);
    }
    let outputs: Vec<(String, u64, usize)> = gpu["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            let len = o["shape"].as_array().unwrap().iter().map(|d| integrator.size(d) as usize).product::<usize>();
            (o["name"].as_str().unwrap().to_string(), dev.alloc(4 * len).unwrap(), len)
        })
        .collect();
    let workspace = dev.alloc(gpu["workspace_bytes"].as_u64().unwrap() as usize).unwrap();
    let outs: Vec<u64> = outputs.iter().map(|o| o.1).collect();
    let entry = program["entry"].as_u64().unwrap() as usize;
    integrator.call(&mut dev, entry, &args, &outs, workspace);
    assert_eq!(dev.download(status, 4).unwrap(), vec![0; 4], "status word");
    let values = outputs
        .iter()
        .map(|(name, ptr, len)| (name.clone(), dev.download(*ptr, 4 * len).unwrap().chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()))
        .collect();
    (program["functions"][entry]["steps"].as_array().unwrap().clone(), values)
}

/// A host-driven scan step, and a persistent scan kernel, among `steps`.
fn assert_both_kinds_of_scan(steps: &[Value]) {
    assert!(steps.iter().any(|s| s.get("scan").is_some()), "the program should hold a host-driven scan");
    assert!(
        steps.iter().any(|s| s["launch"]["params"].as_array().is_some_and(|ps| ps.iter().any(|p| p.get("scratch").is_some()))),
        "the program should hold a persistent scan kernel"
    );
}

/// The tokens `from..to` of row 0 of a case's reference input, as the `input_ids` slot holds them.
fn id_bytes(ids: &Array, from: usize, to: usize) -> Vec<u8> {
    ids.i64[from..to].iter().flat_map(|x| x.to_le_bytes()).collect()
}

const CASE: &str = "tests/vectors/ttt-linear-mamba-backbone";

#[test]
fn the_launch_contract_runs_a_model_without_tttc() {
    let case = repo().join(CASE);
    let io = read(&case.join("io.safetensors"));
    let weights = read_raw(&case.join("model.safetensors"));
    let (ids, logits) = (&io["input_ids"], &io["logits"]);
    // The first sequence's prefix that ends inside a mini-batch (the scans' last chunks are
    // short), from a program compiled for any length up to 40; at B = 1 the LM head's scan has a
    // single lane and is a host-driven `scan` step.
    let v = logits.shape[2];
    let t = 21;
    let out = scratch("gpu_program").join("compiled");
    let r = tttc(&["compile", p(&case), "-o", p(&out), "--batch", "1", "--seq-len", "40", "--no-ptxas"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let (steps, got) = run_compiled(&out, "gpu", &[("T", t)], &|name| {
        if name == "input_ids" {
            id_bytes(ids, 0, t)
        } else {
            weights.iter().find(|w| w.0 == name).unwrap_or_else(|| panic!("no weight {name}")).3.clone()
        }
    });
    assert_both_kinds_of_scan(&steps);
    let ratio = parity_ratio(&got["logits"], &logits.f32[..t * v], 1e-5);
    assert!(ratio <= 1.0, "logits at {ratio:.2}x tolerance");
}

/// The training step's program (`gpu/loss_and_grad/`), run the same way on the whole reference
/// input: the loss and every parameter's gradient match the reference. Its backward sweeps are
/// reverse scans, host-driven ones among them.
#[test]
fn the_launch_contract_runs_a_training_step_without_tttc() {
    let case = repo().join(CASE);
    let io = read(&case.join("io.safetensors"));
    let weights = read_raw(&case.join("model.safetensors"));
    let ids = &io["input_ids"];
    let (b, t) = (ids.shape[0], ids.shape[1]);
    let out = scratch("gpu_program_training").join("compiled");
    let r = tttc(&["compile", p(&case), "-o", p(&out), "--batch", &(b + 1).to_string(), "--seq-len", &(t + 7).to_string(), "--no-ptxas"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let (steps, got) = run_compiled(&out, "gpu_loss_and_grad", &[("B", b), ("T", t)], &|name| {
        if name == "input_ids" {
            id_bytes(ids, 0, b * t)
        } else {
            weights.iter().find(|w| w.0 == name).unwrap_or_else(|| panic!("no weight {name}")).3.clone()
        }
    });
    assert_both_kinds_of_scan(&steps);
    assert!(steps.iter().any(|s| s["scan"]["reverse"] == true), "the backward sweep should hold a host-driven reverse scan");
    let ratio = parity_ratio(&got["loss"], &io["loss"].f32, 1e-5);
    assert!(ratio <= 1.0, "loss at {ratio:.2}x tolerance");
    let want = read(&case.join("grads.safetensors"));
    assert_eq!(got.len(), want.len() + 1, "the loss and one gradient per parameter");
    for (param, reference) in &want {
        let ratio = parity_ratio(&got[param], &reference.f32, 1e-4);
        assert!(ratio <= 1.0, "d/d{param} at {ratio:.2}x tolerance");
    }
}

/// A layer compiled alone (LaCT's bidirectional layer, `tests/vectors-lact/lact-bidir-sgd`): its
/// forward program gives the case's `y`, and its vector-Jacobian product's (`gpu/vjp/`), for the
/// cotangent `r`, the case's `dx` and every parameter's gradient.
#[test]
fn the_launch_contract_runs_a_compiled_layer_both_ways() {
    let case = repo().join("tests/vectors-lact/lact-bidir-sgd");
    let io = read(&case.join("layer.safetensors"));
    let weights = read_raw(&case.join("model.safetensors"));
    let (b, t) = (io["x"].shape[0], io["x"].shape[1]);
    let out = scratch("gpu_program_layer").join("compiled");
    let r = tttc(&["compile", p(&case), "-o", p(&out), "--batch", &b.to_string(), "--seq-len", &t.to_string(), "--no-ptxas"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let slot = |name: &str| -> Vec<u8> {
        let named = |n: &str| io[n].f32.iter().flat_map(|x| x.to_le_bytes()).collect();
        match name {
            "x" => named("x"),
            "d.y" => named("r"),
            _ => weights.iter().find(|w| w.0 == name).unwrap_or_else(|| panic!("no weight {name}")).3.clone(),
        }
    };
    let lengths = [("B", b), ("T", t)];
    let (_, got) = run_compiled(&out, "gpu", &lengths, &slot);
    let ratio = parity_ratio(&got["y"], &io["y"].f32, 1e-5);
    assert!(ratio <= 1.0, "y at {ratio:.2}x tolerance");
    let (_, got) = run_compiled(&out, "gpu_vjp", &lengths, &slot);
    let ratio = parity_ratio(&got["d.x"], &io["dx"].f32, 1e-4);
    assert!(ratio <= 1.0, "dx at {ratio:.2}x tolerance");
    let want = read(&case.join("grads.safetensors"));
    assert_eq!(got.len(), want.len() + 1, "dx and one gradient per parameter");
    for (param, reference) in &want {
        let ratio = parity_ratio(&got[&format!("d.{param}")], &reference.f32, 1e-4);
        assert!(ratio <= 1.0, "d/d{param} at {ratio:.2}x tolerance");
    }
}

/// `tttc compile --resume-at P`: the same contract with the state as further slots. The model
/// compiled at the position of a state saved inside a mini-batch (`tttc run --state-out` after 21
/// tokens: position 5 of 16), fed that state in its `state.NAME` argument slots, gives the
/// reference logits of the next 12 tokens and, in its `state.NAME` output slots, the state of one
/// run over all 33.
#[test]
fn the_launch_contract_continues_from_a_state() {
    let case = repo().join(CASE);
    let io = read(&case.join("io.safetensors"));
    let weights = read_raw(&case.join("model.safetensors"));
    let (ids, logits) = (&io["input_ids"], &io["logits"]);
    let (t_all, v) = (ids.shape[1], logits.shape[2]);
    let (first, t) = (21, 12);
    let dir = scratch("gpu_program_resumed");
    let state_after = |len: usize, tag: &str| {
        let (input, out, state) =
            (dir.join(format!("{tag}-in.safetensors")), dir.join(format!("{tag}-out.safetensors")), dir.join(format!("{tag}-state.safetensors")));
        write_raw(&input, &[("input_ids".into(), safetensors::Dtype::I64, vec![1, len], id_bytes(ids, 0, len))]);
        let r = tttc(&["run", p(&case), "--input", p(&input), "--output", p(&out), "--state-out", p(&state), "--backend", "interp"]);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        read_raw(&state)
    };
    let start = state_after(first, "first");
    let position = start.iter().find(|s| s.0 == "position").map(|s| f32::from_le_bytes(s.3[..4].try_into().unwrap())).unwrap() as usize;
    assert_eq!(position, first % 16);
    let out = dir.join("compiled");
    let r = tttc(&["compile", p(&case), "-o", p(&out), "--batch", "1", "--seq-len", &t.to_string(), "--resume-at", &position.to_string(), "--no-ptxas"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let (_, got) = run_compiled(&out, "gpu", &[("T", t)], &|name| match (name, name.strip_prefix("state.")) {
        ("input_ids", _) => id_bytes(ids, first, first + t),
        (_, Some(state)) => start.iter().find(|s| s.0 == state).unwrap_or_else(|| panic!("no state {state}")).3.clone(),
        _ => weights.iter().find(|w| w.0 == name).unwrap_or_else(|| panic!("no weight {name}")).3.clone(),
    });
    assert!(t_all >= first + t);
    let ratio = parity_ratio(&got["logits"], &logits.f32[first * v..(first + t) * v], 1e-5);
    assert!(ratio <= 1.0, "logits at {ratio:.2}x tolerance");
    let whole = state_after(first + t, "whole");
    for (name, _, _, bytes) in whole.iter().filter(|s| s.0 != "position") {
        let want: Vec<f32> = bytes.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        let have = got.get(&format!("state.{name}")).unwrap_or_else(|| panic!("no output slot state.{name}"));
        let ratio = parity_ratio(have, &want, 1e-5);
        assert!(ratio <= 1.0, "state {name} at {ratio:.2}x tolerance");
    }
}

/// Decoding's programs (`gpu/prefill/`, `gpu/step/`), run the same way on every reference case
/// that has them (tests/compiled_model.rs checks which do): a prompt that ends two tokens before
/// a mini-batch boundary, then greedy steps across it, each fed the state slots the call before
/// wrote (the step's arguments 1.., in the order of its outputs 1..). The tokens are those
/// `tttc generate` chooses on the CPU, and every token's logits are its within 1e-4.
#[test]
fn the_launch_contract_decodes_without_tttc() {
    let dir = scratch("gpu_program_decoding");
    let mut decoded = 0;
    for case in all_cases().into_iter().filter(|c| runs_on(c, "ptx-sim")) {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        let ids = &read(&case.join("io.safetensors"))["input_ids"];
        let weights = read_raw(&case.join("model.safetensors"));
        let (len, new) = ((mini_batch(&case) - 2).min(ids.shape[1]), 5);
        let out = dir.join(&name);
        let r = tttc(&["compile", p(&case), "-o", p(&out), "--batch", "1", "--seq-len", &(len + 3).to_string(), "--no-ptxas"]);
        assert!(r.status.success(), "{name}: {}", String::from_utf8_lossy(&r.stderr));
        let manifest: Value = serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
        if manifest.get("gpu_step").is_none() {
            continue;
        }
        let names = |slots: &Value| -> Vec<String> { slots.as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap().to_string()).collect() };
        let step_args = names(&manifest["gpu_step"]["args"]);
        let state = names(&manifest["gpu_step"]["outputs"])[1..].to_vec();
        assert!(state.iter().all(|n| n.starts_with("state.")) && step_args[1..=state.len()] == state, "{name}: the step's state slots: {step_args:?}");
        assert_eq!(names(&manifest["gpu_prefill"]["outputs"])[1..], state, "{name}: the prefill hands over the step's state");
        let weight = |name: &str| weights.iter().find(|w| w.0 == name).unwrap_or_else(|| panic!("no weight {name}")).3.clone();

        let (_, mut got) =
            run_compiled(&out, "gpu_prefill", &[("B", 1), ("T", len)], &|name| if name == "input_ids" { id_bytes(ids, 0, len) } else { weight(name) });
        let (mut tokens, mut logits) = (Vec::new(), Vec::new());
        for k in 0..new {
            let row = &got["logits"];
            let next = row.iter().enumerate().fold(0, |m, (i, &x)| if x > row[m] { i } else { m }) as i64;
            tokens.push(next);
            logits.extend_from_slice(row);
            if k + 1 == new {
                break;
            }
            let floats = |name: &str| got[name].iter().flat_map(|x| x.to_le_bytes()).collect();
            got = run_compiled(&out, "gpu_step", &[("B", 1)], &|name| match name {
                "input_ids" => next.to_le_bytes().to_vec(),
                _ if name.starts_with("state.") => floats(name),
                _ => weight(name),
            })
            .1;
        }

        let prompt = dir.join(format!("{name}-prompt.safetensors"));
        write_raw(&prompt, &[("input_ids".into(), safetensors::Dtype::I64, vec![1, len], id_bytes(ids, 0, len))]);
        let generated = dir.join(format!("{name}-generated.safetensors"));
        let r = tttc(&["generate", p(&case), "--prompt", p(&prompt), "--max-new-tokens", &new.to_string(), "-o", p(&generated), "--backend", "cpu"]);
        assert!(r.status.success(), "{name}: {}", String::from_utf8_lossy(&r.stderr));
        let want = read(&generated);
        assert_eq!(tokens, want["tokens"].i64[len..], "{name}: the tokens");
        let ratio = parity_ratio(&logits, &want["logits"].f32, 1e-4);
        eprintln!("{name}: {new} tokens equal, logits error {ratio:.3} of tolerance");
        assert!(ratio <= 1.0, "{name}: logits at {ratio:.2}x tolerance");
        decoded += 1;
    }
    assert!(decoded > 0, "no reference case has decoding programs");
}
