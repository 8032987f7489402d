//! NVIDIA's PTX assembler, when it is installed: every module is assembled for each target and
//! its `-v` report read back (registers, spills, stack, shared memory per kernel). tttc needs no
//! CUDA toolkit to emit PTX; `ptxas` is the independent check that the text is valid for the
//! hardware, and its figures are what occupancy is computed from.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// `ptxas -v`'s figures for one kernel on one target.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Figures {
    pub registers: u32,
    pub spill_store_bytes: u32,
    pub spill_load_bytes: u32,
    pub stack_frame_bytes: u32,
    pub shared_bytes: u32,
}

/// `ptxas` from `TTTC_PTXAS`, else from `PATH`.
pub fn find() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TTTC_PTXAS") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join("ptxas")).find(|p| p.is_file())
}

/// Assembles `ptx` for `target` (`sm_80`, `sm_90`) and returns each kernel's figures, by name.
pub fn assemble(ptxas: &std::path::Path, ptx: &str, target: &str) -> Result<Vec<(String, Figures)>> {
    let dir = std::env::temp_dir().join(format!("tttc-ptxas-{}-{target}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (input, output) = (dir.join("module.ptx"), dir.join("module.cubin"));
    std::fs::write(&input, ptx)?;
    let out = Command::new(ptxas)
        .arg(format!("-arch={target}"))
        .arg("-v")
        .arg(&input)
        .arg("-o")
        .arg(&output)
        .output()
        .with_context(|| format!("running {}", ptxas.display()))?;
    let _ = std::fs::remove_dir_all(&dir);
    let report = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        let first = report.lines().find(|l| l.contains("error")).unwrap_or(report.trim());
        bail!("ptxas rejected the {target} module: {first}");
    }
    Ok(parse_report(&report))
}

/// Reads `ptxas info` lines: a "Compiling entry function 'NAME'" line starts a kernel, then
/// "N bytes stack frame, N bytes spill stores, N bytes spill loads" and
/// "Used N registers, N bytes smem, …".
fn parse_report(report: &str) -> Vec<(String, Figures)> {
    let mut out: Vec<(String, Figures)> = Vec::new();
    let number_before = |line: &str, what: &str| -> Option<u32> {
        let at = line.find(what)?;
        line[..at].split_whitespace().last()?.parse().ok()
    };
    for line in report.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or("").to_string();
            out.push((name, Figures::default()));
            continue;
        }
        let Some((_, f)) = out.last_mut() else { continue };
        if line.contains("stack frame") {
            f.stack_frame_bytes = number_before(line, "bytes stack frame").unwrap_or(0);
            f.spill_store_bytes = number_before(line, "bytes spill stores").unwrap_or(0);
            f.spill_load_bytes = number_before(line, "bytes spill loads").unwrap_or(0);
        }
        if line.contains("Used") && line.contains("registers") {
            f.registers = number_before(line, "registers").unwrap_or(0);
            f.shared_bytes = number_before(line, "bytes smem").unwrap_or(0);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_a_ptxas_report() {
        let report = "ptxas info    : 0 bytes gmem\nptxas info    : Compiling entry function 'tttc_k0' for 'sm_80'\nptxas info    : Function properties for tttc_k0\n    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\nptxas info    : Used 40 registers, 4096 bytes smem, 380 bytes cmem[0]\nptxas info    : Compiling entry function 'tttc_k1' for 'sm_80'\nptxas info    : Function properties for tttc_k1\n    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\nptxas info    : Used 10 registers, 368 bytes cmem[0]\n";
        let figures = super::parse_report(report);
        assert_eq!(figures.len(), 2);
        assert_eq!(figures[0].0, "tttc_k0");
        assert_eq!(figures[0].1, super::Figures { registers: 40, spill_store_bytes: 4, spill_load_bytes: 12, stack_frame_bytes: 8, shared_bytes: 4096 });
        assert_eq!(figures[1].1.registers, 10);
        assert_eq!(figures[1].1.shared_bytes, 0);
    }
}
