//! Shared helpers of the integration tests: the reference cases kept in `tests/vectors`,
//! `tests/vectors-gated` and `tests/vectors-lact`, running
//! the `tttc` binary, reading tensor files and SPEC §1's parity bound.

#![allow(dead_code)] // each test binary uses its own subset

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use safetensors::{Dtype, SafeTensors};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every shipped example model (`examples/*.toml`), sorted.
pub fn examples() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> =
        std::fs::read_dir(repo().join("examples")).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "toml")).collect();
    v.sort();
    assert!(v.len() >= 8, "expected a tiny and a 125m example per family");
    v
}

/// Every backend that runs on any machine, by name (a backend added to the runtime's registry is
/// tested here too).
pub fn backends() -> Vec<&'static str> {
    backends_where(|c| !c.needs_device)
}

/// The backends that need a GPU (`cuda`): their tests are ignored on machines without one.
pub fn gpu_backends() -> Vec<&'static str> {
    backends_where(|c| c.needs_device)
}

fn backends_where(keep: impl Fn(&tttc_runtime::Capabilities) -> bool) -> Vec<&'static str> {
    tttc_runtime::backends().iter().filter(|b| keep(&b.capabilities())).map(|b| b.name()).collect()
}

/// Every reference case: each folder under `tests/vectors` (a case added there is picked up).
pub fn cases() -> Vec<PathBuf> {
    cases_in("tests/vectors")
}

/// The gated inner optimizer's cases (SPEC §2, "Gated inner optimizer"): logits and loss only (no
/// gradients file: their gradients are checked by finite differences), each folder under
/// `tests/vectors-gated`.
pub fn gated_cases() -> Vec<PathBuf> {
    cases_in("tests/vectors-gated")
}

/// Every case with logits and loss: [`cases`], [`gated_cases`] and [`lact_cases`].
pub fn all_cases() -> Vec<PathBuf> {
    [cases(), gated_cases(), lact_cases()].concat()
}

/// LaCT's language-model cases (SPEC-lact.md §1: logits, loss and gradients; none of those for
/// T = 1): the public ones under `tests/vectors-lact`, and under `tests/vectors-lact-switches`
/// cases made by the same generator (LaCT's own code) that vary every switch of SPEC-lact.md §2.
/// Each folder with an `io.safetensors`.
pub fn lact_cases() -> Vec<PathBuf> {
    lact_folders().into_iter().filter(|c| c.join("io.safetensors").exists()).collect()
}

/// LaCT's layer cases (SPEC-lact.md §8: a bidirectional layer's `y`, `dx` and gradients), each
/// folder with a `layer.safetensors`, in the same two places.
pub fn lact_layer_cases() -> Vec<PathBuf> {
    lact_folders().into_iter().filter(|c| c.join("layer.safetensors").exists()).collect()
}

fn lact_folders() -> Vec<PathBuf> {
    [cases_in("tests/vectors-lact"), cases_in(SWITCHES)].concat()
}

/// Where the cases that vary LaCT's switches live: they check the model's definition, which every
/// backend runs alike (the backends are checked op by op and on the public cases), so they run
/// on the interpreter and the CPU backend only, which keeps the suite's time.
const SWITCHES: &str = "tests/vectors-lact-switches";

/// Whether the tests run `case` on `backend` (see [`SWITCHES`]).
pub fn runs_on(case: &Path, backend: &str) -> bool {
    !case.starts_with(repo().join(SWITCHES)) || ["interp", "cpu"].contains(&backend)
}

fn cases_in(folder: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(repo().join(folder))
        .unwrap_or_else(|e| panic!("{folder}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("config.json").exists())
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no reference cases in {folder}");
    v
}

pub fn tttc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tttc")).args(args).output().expect("tttc runs")
}

pub fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A fresh scratch folder under the target directory.
pub fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[derive(Debug, Clone)]
pub struct Array {
    pub shape: Vec<usize>,
    pub f32: Vec<f32>,
    pub i64: Vec<i64>,
}

pub fn read(path: &Path) -> BTreeMap<String, Array> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, v)| {
            let d = v.data();
            let (f32, i64) = match v.dtype() {
                Dtype::F32 => (d.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect(), vec![]),
                Dtype::I64 => (vec![], d.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect()),
                other => panic!("unexpected dtype {other:?}"),
            };
            (name, Array { shape: v.shape().to_vec(), f32, i64 })
        })
        .collect()
}

/// Writes tensors to a safetensors file (for building bad inputs).
pub fn write(path: &Path, tensors: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)>) {
    let views: Vec<(String, safetensors::tensor::TensorView)> =
        tensors.iter().map(|(n, dt, shape, data)| (n.to_string(), safetensors::tensor::TensorView::new(*dt, shape.clone(), data).unwrap())).collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

pub fn i64_bytes(v: &[i64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// SPEC §1: `max|ours − ref| / (rtol·max|ref| + 1e-6)`; parity when ≤ 1.
pub fn parity_ratio(ours: &[f32], reference: &[f32], rtol: f64) -> f64 {
    assert_eq!(ours.len(), reference.len(), "lengths differ");
    let max_ref = reference.iter().fold(0f64, |m, &x| m.max((x as f64).abs()));
    let max_err = ours.iter().zip(reference).fold(0f64, |m, (&a, &b)| m.max((a as f64 - b as f64).abs()));
    max_err / (rtol * max_ref + 1e-6)
}

/// A raw tensor as stored: name, dtype, shape, little-endian bytes.
pub type RawTensor = (String, Dtype, Vec<usize>, Vec<u8>);

pub fn read_raw(path: &Path) -> Vec<RawTensor> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<RawTensor> = st.tensors().into_iter().map(|(n, t)| (n, t.dtype(), t.shape().to_vec(), t.data().to_vec())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

pub fn write_raw(path: &Path, tensors: &[RawTensor]) {
    let views: Vec<(String, safetensors::tensor::TensorView)> =
        tensors.iter().map(|(n, dt, shape, data)| (n.clone(), safetensors::tensor::TensorView::new(*dt, shape.clone(), data).unwrap())).collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// Copies a reference case into a scratch folder so a test can damage it.
pub fn copy_case(case: &str, name: &str) -> PathBuf {
    let dir = scratch(name);
    for f in ["config.json", "model.safetensors", "io.safetensors"] {
        std::fs::copy(repo().join("tests/vectors").join(case).join(f), dir.join(f)).unwrap();
    }
    dir
}

/// The mini-batch size of a TTT case's config or a LaCT case's chunk size (2048 when its config
/// leaves the default), 16 for the families without one (where the split points tests derive
/// from it are just points).
pub fn mini_batch(case: &Path) -> usize {
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(case.join("config.json")).unwrap()).unwrap();
    let lact = config["model_type"] == "lact_swiglu";
    let (key, default) = if lact { ("lact_chunk_size", 2048) } else { ("mini_batch_size", 16) };
    config[key].as_u64().unwrap_or(default) as usize
}

/// Asserts that the state file `got` holds, named `prefix` + NAME, each tensor NAME of `want`
/// (its shape, its values within SPEC's 1e-5) and nothing else under `prefix`.
pub fn assert_state_matches(got: &BTreeMap<String, Array>, prefix: &str, want: &BTreeMap<String, Array>, tag: &str) {
    assert_eq!(got.keys().filter(|n| n.starts_with(prefix)).count(), want.len(), "{tag}: state names {:?}", got.keys().collect::<Vec<_>>());
    for (key, w) in want {
        let have = got.get(&format!("{prefix}{key}")).unwrap_or_else(|| panic!("{tag}: no state {prefix}{key}"));
        assert_eq!(have.shape, w.shape, "{tag}: state {prefix}{key} shape");
        let ratio = parity_ratio(&have.f32, &w.f32, 1e-5);
        assert!(ratio <= 1.0, "{tag}: state {prefix}{key} at {ratio:.2}x tolerance");
    }
}
