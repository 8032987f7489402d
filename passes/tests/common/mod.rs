//! Shared helpers of the passes' integration tests.

#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};

pub fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// The tiny example models (`examples/*tiny*.toml`), sorted.
pub fn tiny_examples() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(examples())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml") && p.to_string_lossy().contains("tiny"))
        .collect();
    v.sort();
    assert!(v.len() >= 4, "expected a tiny example per family");
    v
}
