//! A graph as PTX kernels for every target and the host program that launches them
//! (docs/gpu-model.md).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use tttc_ir::{DimEnv, Graph};

use crate::manifest::{CpuLength, CpuSlot, GpuEstimate, GpuKernel, GpuModel};
use crate::Files;

/// `graph` as PTX kernels for every target and the program that launches them, in the folder
/// `dir` of the output, assembled by `ptxas` when there is one: the manifest's entry and the files.
pub(crate) fn gpu_program(graph: &Graph, env: &DimEnv, ptxas: Option<&Path>, dir: &str, what: &str, log: &mut dyn FnMut(&str)) -> Result<(GpuModel, Files)> {
    let started = std::time::Instant::now();
    let gpu = tttc_ptx::model::GpuModel::compile(graph, env).with_context(|| format!("compiling {what} for the GPU"))?;
    let modules: Vec<(&'static str, String)> = tttc_ptx::TARGETS.iter().map(|&t| (t, gpu.module(t).to_text())).collect();
    let mut figures: BTreeMap<String, BTreeMap<&'static str, tttc_ptx::ptxas::Figures>> = BTreeMap::new();
    if let Some(ptxas) = ptxas {
        // The targets at once: ptxas uses one core and takes most of a compile's time.
        let assembled: Vec<Result<Vec<(String, tttc_ptx::ptxas::Figures)>>> = std::thread::scope(|scope| {
            let jobs: Vec<_> = modules.iter().map(|(target, text)| scope.spawn(move || tttc_ptx::ptxas::assemble(ptxas, text, target))).collect();
            jobs.into_iter().map(|job| job.join().unwrap_or_else(|_| Err(anyhow::anyhow!("assembling the PTX failed")))).collect()
        });
        for ((target, _), kernels) in modules.iter().zip(assembled) {
            for (kernel, f) in kernels? {
                figures.entry(kernel).or_default().insert(target, f);
            }
        }
    }
    let work = gpu.work();
    let dims = gpu.launch_dims();
    let h100 = &tttc_ptx::estimate::H100_SXM;
    let estimates: Vec<Option<tttc_ptx::estimate::KernelEstimate>> = gpu
        .kernels
        .iter()
        .zip(&work)
        .zip(&dims)
        .map(|((k, w), d)| {
            let f = figures.get(&k.name)?.get("sm_90")?;
            let (grid, block) = (*d)?;
            Some(h100.kernel(w, grid.iter().map(|&g| g as u64).product(), block.iter().product(), f, k.uses_tensor_cores()))
        })
        .collect();
    let estimate = (ptxas.is_some() && estimates.iter().all(Option::is_some)).then(|| {
        let mut by_bound: BTreeMap<&'static str, f64> = BTreeMap::new();
        for e in estimates.iter().flatten() {
            *by_bound.entry(e.bound).or_default() += e.seconds;
        }
        GpuEstimate { gpu: h100.clone(), seconds: by_bound.values().sum(), launches: work.iter().map(|w| w.launches).sum(), seconds_by_bound: by_bound }
    });
    if let Some(e) = &estimate {
        log(&format!(
            "gpu estimate for the {} (no GPU measured): {:.2} ms per call of {what}, {} launches ({})",
            e.gpu.name,
            e.seconds * 1e3,
            e.launches,
            e.seconds_by_bound.iter().map(|(k, v)| format!("{k}-bound {:.2} ms", v * 1e3)).collect::<Vec<_>>().join(", ")
        ));
    }
    log(&format!(
        "gpu: {what}, {} kernels in {dir}/sm_80.ptx and {dir}/sm_90.ptx{}, launched as {dir}/program.json says ({} workspace at the bounds; {:.2} s)",
        gpu.kernels.len(),
        if ptxas.is_some() { ", assembled by ptxas" } else { "" },
        tttc_files::human(gpu.signature.workspace_bytes as u64),
        started.elapsed().as_secs_f64()
    ));
    let entry = GpuModel {
        modules: modules.iter().map(|(t, _)| (*t, format!("{dir}/{t}.ptx"))).collect(),
        program: format!("{dir}/program.json"),
        workspace_bytes: gpu.signature.workspace_bytes,
        status_bytes: 4,
        lengths: gpu.signature.lengths.iter().map(|(name, max)| CpuLength { name: name.clone(), max: *max }).collect(),
        args: gpu.signature.args.iter().map(CpuSlot::from).collect(),
        outputs: gpu.signature.outputs.iter().map(CpuSlot::from).collect(),
        kernels: gpu
            .kernels
            .iter()
            .zip(&work)
            .zip(estimates)
            .map(|((k, w), h100)| GpuKernel {
                name: k.name.clone(),
                params: k.params.iter().map(|p| p.name.clone()).collect(),
                shared_bytes: k.shared_bytes(),
                work: *w,
                ptxas: figures.remove(&k.name).unwrap_or_default(),
                h100,
            })
            .collect(),
        ptxas: ptxas.map(|p| p.display().to_string()),
        estimate,
    };
    let mut files: Files = modules.into_iter().map(|(target, text)| (format!("{dir}/{target}.ptx"), text.into_bytes())).collect();
    files.push((format!("{dir}/program.json"), (serde_json::to_string_pretty(&gpu.program())? + "\n").into_bytes()));
    Ok((entry, files))
}
