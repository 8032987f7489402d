//! The graph's PTX kernels (`tttc_ptx`), as `tttc compile` writes them, for every length up to
//! the bounds they are compiled for: executed by the PTX simulator (`tttc_ptx_sim`) or on GPU 0
//! through the CUDA driver.

use std::sync::Mutex;

use anyhow::Result;
use tttc_ir::{DimEnv, Graph, Tensor};
use tttc_ptx::model::GpuModel;
use tttc_ptx_sim::SimDevice;

use super::{Backend, Capabilities, Program, Sizes};

pub struct PtxSim;

impl Backend for PtxSim {
    fn name(&self) -> &'static str {
        "ptx-sim"
    }

    fn about(&self) -> &'static str {
        "The graph's PTX kernels (as `tttc compile` writes them) executed on this CPU by the PTX simulator, every \
thread with bounds and race checks: slow, for checking"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { sizes: Sizes::UpTo, needs_device: false, profiled: false }
    }

    fn compile(&self, graph: &Graph, sizes: &DimEnv) -> Result<Box<dyn Program>> {
        let model = GpuModel::compile(graph, sizes)?;
        // The simulator reads the text `tttc compile` writes.
        let device = SimDevice::load(&model.module(tttc_ptx::TARGETS[0]).to_text())?;
        Ok(Box::new(Simulated { model, device: Mutex::new(device) }))
    }
}

/// The kernels and the host program, and the simulator with their module loaded.
struct Simulated {
    model: GpuModel,
    device: Mutex<SimDevice>,
}

impl Program for Simulated {
    fn run(&self, args: &[&Tensor]) -> Result<Vec<Tensor>> {
        self.model.run(&mut *self.device.lock().expect("not poisoned"), args)
    }
}

#[cfg(feature = "cuda")]
pub struct Cuda;

#[cfg(feature = "cuda")]
impl Backend for Cuda {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn about(&self) -> &'static str {
        "The same PTX kernels on GPU 0 through the CUDA driver, loaded at run time (without a GPU it says so)"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { sizes: Sizes::UpTo, needs_device: true, profiled: false }
    }

    fn compile(&self, graph: &Graph, sizes: &DimEnv) -> Result<Box<dyn Program>> {
        Ok(Box::new(OnGpu(GpuModel::compile(graph, sizes)?)))
    }
}

/// The kernels and the host program; the device is opened for each run.
#[cfg(feature = "cuda")]
struct OnGpu(GpuModel);

#[cfg(feature = "cuda")]
impl Program for OnGpu {
    fn run(&self, args: &[&Tensor]) -> Result<Vec<Tensor>> {
        self.0.run(&mut super::cuda::CudaDevice::open(&self.0)?, args)
    }
}
