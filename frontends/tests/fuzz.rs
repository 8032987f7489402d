//! Mutated inputs from a seeded generator: safetensors files (length prefix, header bytes,
//! shapes, offsets, dtypes, truncated data) through `parse_safetensors`, and config.json texts
//! (deleted, duplicated, renamed and added keys, odd values, random bytes) through
//! `parse_config_json` and, for those that parse with small sizes, `build`. Errors are fine; a
//! panic or a single allocation above `CAP` fails the test, naming the input.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};
use tttc_frontends::rng::SplitMix64;
use tttc_frontends::ModelConfig;

/// The largest single allocation an input may cause.
const CAP: usize = 256 << 20;

/// Records the largest allocation request of this thread (each test runs on its own thread).
struct Counting;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn record(size: usize) {
    // Thread-locals may be gone while a thread exits; those allocations are not an input's.
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` on an input described by `what`: it must not panic nor allocate more than `CAP` at once.
fn check<T>(what: &dyn Fn() -> String, f: impl FnOnce() -> T) {
    LARGEST.with(|l| l.set(0));
    let r = catch_unwind(AssertUnwindSafe(f));
    let largest = LARGEST.with(|l| l.get());
    assert!(r.is_ok(), "panic on {}", what());
    assert!(largest <= CAP, "an allocation of {largest} bytes on {}", what());
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn vector_files(name: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(repo().join("tests/vectors")).unwrap().map(|e| e.unwrap().path().join(name)).filter(|p| p.exists()).collect();
    v.sort();
    assert!(!v.is_empty(), "no {name} in tests/vectors");
    v
}

fn pick<'a, T>(rng: &mut SplitMix64, items: &'a [T]) -> &'a T {
    &items[rng.below(items.len())]
}

/// Numbers at the edges: 0, small, the size bound and around it, past u32 and u64.
fn edge_number(rng: &mut SplitMix64) -> u64 {
    let any = rng.next_u64();
    *pick(rng, &[0, 1, 2, 3, 7, 16, 255, 1 << 31, (1 << 31) + 1, 1 << 32, 1 << 40, 1 << 62, u64::MAX, any])
}

fn odd_value(rng: &mut SplitMix64) -> Value {
    match rng.below(12) {
        0 => json!(edge_number(rng)),
        1 => json!(-(rng.below(1000) as i64) - 1),
        2 => json!(*pick(rng, &[0.5, -0.0, 1e-320, 1e308, -1e308, 3.0, 1e-6])),
        3 => json!(*pick(rng, &["", "auto", "silu", "mlp", "linear", "16", "random", "\n"])),
        4 => json!({"widths": [edge_number(rng)], "bias": rng.below(2) == 0}),
        5 => json!([edge_number(rng), "x", null]),
        6 => json!({"type": "linear", "factor": 2.0}),
        7 => Value::Null,
        8 => json!(rng.below(2) == 0),
        9 => json!({}),
        10 => json!([]),
        _ => json!(rng.below(64)),
    }
}

/// `text` with a few bytes flipped, inserted or deleted (each byte may end up anywhere).
fn mutate_bytes(rng: &mut SplitMix64, mut bytes: Vec<u8>, within: std::ops::Range<usize>) -> Vec<u8> {
    for _ in 0..1 + rng.below(4) {
        let at = within.start + rng.below((within.end - within.start).max(1));
        let at = at.min(bytes.len());
        match rng.below(3) {
            0 if at < bytes.len() => bytes[at] ^= 1 << rng.below(8),
            1 => bytes.insert(at, *pick(rng, b"{}[]\",:0123456789-eE.x \xff\x00")),
            _ if at < bytes.len() => {
                bytes.remove(at);
            }
            _ => {}
        }
    }
    bytes
}

/// A safetensors file from its header and data.
fn safetensors(header: &Value, data: &[u8]) -> Vec<u8> {
    let h = header.to_string();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    out
}

fn mutate_safetensors(rng: &mut SplitMix64, file: &[u8]) -> Vec<u8> {
    let n = u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
    let mut header: Value = serde_json::from_slice(&file[8..8 + n]).unwrap();
    let data = &file[8 + n..];
    match rng.below(6) {
        // The length prefix.
        0 => {
            let mut out = file.to_vec();
            let len = match rng.below(3) {
                0 => edge_number(rng),
                1 => (n as u64).wrapping_add(rng.below(16) as u64).wrapping_sub(8),
                _ => file.len() as u64,
            };
            out[..8].copy_from_slice(&len.to_le_bytes());
            out
        }
        // The header's bytes, keeping its length prefix (so offsets shift) or fixing it.
        1 => {
            let mut out = mutate_bytes(rng, file.to_vec(), 8..8 + n);
            if rng.below(2) == 0 {
                let len = (n + out.len()).wrapping_sub(file.len()) as u64;
                out[..8].copy_from_slice(&len.to_le_bytes());
            }
            out
        }
        // A tensor's shape, offsets or dtype.
        2 | 3 => {
            let names: Vec<String> = header.as_object().unwrap().keys().filter(|k| *k != "__metadata__").cloned().collect();
            let name = pick(rng, &names).clone();
            let t = &mut header[&name];
            match rng.below(6) {
                0 => {
                    let shape = t["shape"].as_array_mut().unwrap();
                    let i = rng.below(shape.len() + 1);
                    if i < shape.len() {
                        shape[i] = json!(edge_number(rng));
                    } else {
                        shape.push(json!(edge_number(rng)));
                    }
                }
                1 => t["shape"] = json!([edge_number(rng), edge_number(rng), 0]),
                2 => t["data_offsets"][rng.below(2)] = json!(edge_number(rng)),
                3 => t["dtype"] = json!(*pick(rng, &["F32", "F16", "BF16", "F64", "I64", "I32", "U8", "BOOL", "F8_E4M3", "F4", "X"])),
                4 => t["shape"] = odd_value(rng),
                _ => t[*pick(rng, &["shape", "dtype", "data_offsets"])] = Value::Null,
            }
            safetensors(&header, data)
        }
        // The data cut short, or extra bytes after it.
        4 => {
            let mut out = file.to_vec();
            if rng.below(2) == 0 {
                out.truncate(rng.below(file.len()));
            } else {
                out.extend((0..rng.below(64)).map(|_| rng.next_u64() as u8));
            }
            out
        }
        // Metadata and extra entries.
        _ => {
            let m = header.as_object_mut().unwrap();
            m.insert(format!("extra{}", rng.below(3)), odd_value(rng));
            if rng.below(2) == 0 {
                m.insert("__metadata__".into(), json!({"k": odd_value(rng).to_string()}));
            }
            safetensors(&header, data)
        }
    }
}

#[test]
fn mutated_safetensors_files() {
    let mut rng = SplitMix64(0x5AFE);
    let mut files = vector_files("model.safetensors");
    files.extend(vector_files("io.safetensors"));
    for path in files {
        let file = std::fs::read(&path).unwrap();
        assert!(tttc_frontends::weights::parse_safetensors(&file).is_ok());
        for i in 0..300 {
            let bytes = mutate_safetensors(&mut rng, &file);
            let what = || format!("mutation {i} of {}: header {:?}", path.display(), String::from_utf8_lossy(&bytes[..bytes.len().min(400)]));
            check(&what, || tttc_frontends::weights::parse_safetensors(&bytes));
        }
    }
}

/// Keys worth putting in: every family's, and near-misses.
const KEYS: &[&str] = &[
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "mini_batch_size",
    "conv_kernel",
    "state_size",
    "time_step_rank",
    "expand",
    "ttt_inner",
    "ttt_layer_type",
    "rope_theta",
    "rope_scaling",
    "rms_norm_eps",
    "layer_norm_epsilon",
    "time_step_min",
    "time_step_max",
    "time_step_floor",
    "time_step_scale",
    "ttt_base_lr",
    "initializer_range",
    "head_dim",
    "model_type",
    "hidden_act",
    "pruned_heads",
    "tie_word_embeddings",
    "pre_conv",
    "share_qk",
    "use_gate",
    "use_bias",
    "use_conv_bias",
    "mini_bach_size",
    "",
];

fn mutate_config(rng: &mut SplitMix64, config: &Value) -> String {
    let mut c = config.clone();
    let mut duplicate = None;
    for _ in 0..1 + rng.below(3) {
        let m: &mut Map<String, Value> = c.as_object_mut().unwrap();
        let keys: Vec<String> = m.keys().cloned().collect();
        let key = pick(rng, &keys).clone();
        match rng.below(6) {
            0 => {
                m.remove(&key);
            }
            1 => duplicate = Some((key, odd_value(rng))),
            2 => {
                let v = m.remove(&key).unwrap();
                let mut renamed = key.into_bytes();
                let at = rng.below(renamed.len() + 1);
                renamed.insert(at, b'a' + rng.below(26) as u8);
                if rng.below(2) == 0 {
                    renamed.remove((at + 1) % renamed.len());
                }
                m.insert(String::from_utf8_lossy(&renamed).into_owned(), v);
            }
            3 => {
                m.insert(pick(rng, KEYS).to_string(), odd_value(rng));
            }
            _ => {
                m.insert(key, odd_value(rng));
            }
        }
    }
    let mut text = c.to_string();
    if let Some((key, v)) = duplicate {
        text = text.replacen('{', &format!("{{{}:{v},", json!(key)), 1);
    }
    if rng.below(4) == 0 {
        let n = text.len();
        text = String::from_utf8_lossy(&mutate_bytes(rng, text.into_bytes(), 0..n)).into_owned();
    }
    text
}

/// Whether a config's graph is small enough to build in a fuzz loop.
fn small(c: &ModelConfig) -> bool {
    let sizes = match c {
        ModelConfig::Ttt(c) => vec![c.hidden_size, c.intermediate_size, c.num_hidden_layers * 64, c.mini_batch_size, c.conv_kernel * 16],
        ModelConfig::Mamba(c) => vec![c.hidden_size, c.intermediate_size, c.num_hidden_layers * 64, c.state_size, c.conv_kernel * 16, c.time_step_rank],
        ModelConfig::Llama(c) => vec![c.hidden_size, c.intermediate_size, c.num_hidden_layers * 64, c.num_heads],
        ModelConfig::Lact(c) => vec![c.hidden_size, c.intermediate_size, c.num_hidden_layers * 64, c.chunk_size, c.fast_hidden()],
        ModelConfig::LactBidirectional(c) => vec![c.dim, c.fast_hidden()],
    };
    c.vocab_size() <= 1024 && sizes.iter().all(|&s| s <= 256)
}

#[test]
fn mutated_config_json_texts() {
    let mut rng = SplitMix64(0xC0F16);
    let mut configs: Vec<Value> = vector_files("config.json").iter().map(|p| serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()).collect();
    configs.push(json!({"model_type": "ttt", "vocab_size": 13, "hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 1,
                        "num_attention_heads": 2, "mini_batch_size": 4, "ttt_inner": {"widths": [2, 1], "activation": "relu"}}));
    configs.push(json!({"model_type": "mamba", "vocab_size": 13, "hidden_size": 16, "num_hidden_layers": 1, "time_step_rank": "auto"}));
    let (mut parsed, mut built) = (0, 0);
    for i in 0..4000 {
        let text = mutate_config(&mut rng, &configs[i % configs.len()]);
        let what = || format!("config {i}: {text}");
        check(&what, || {
            let Ok((config, _)) = tttc_frontends::parse_config_json(&text) else { return };
            parsed += 1;
            if small(&config) && tttc_frontends::build(&config).is_ok() {
                built += 1;
            }
        });
    }
    // The mutations leave enough configs valid to exercise the builders.
    assert!(parsed > 100 && built > 50, "{parsed} parsed, {built} built");
}

/// The harness itself: an allocation above the cap fails the check.
#[test]
#[should_panic(expected = "an allocation of")]
fn a_large_allocation_is_seen() {
    check(&|| "a vector of CAP + 1 bytes".into(), || vec![0u8; CAP + 1]);
}
