//! The graph's PTX kernels (`tttc_ptx`), as `tttc compile` writes them, for every length up to
//! the bounds they are compiled for: executed by the PTX simulator (`tttc_ptx_sim`) or on GPU 0
//! through the CUDA driver.

use std::sync::Mutex;

use anyhow::Result;
use tttc_ir::{DimEnv, Graph, Tensor, TensorView};
use tttc_ptx::model::GpuModel;
use tttc_ptx_sim::SimDevice;

use super::{Backend, Capabilities, DeviceStream, Program, Sizes};

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
        Capabilities { sizes: Sizes::UpTo, needs_device: false, profiled: false, on_cpu: false }
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
        Capabilities { sizes: Sizes::UpTo, needs_device: true, profiled: false, on_cpu: false }
    }

    fn compile(&self, graph: &Graph, sizes: &DimEnv) -> Result<Box<dyn Program>> {
        Ok(Box::new(OnGpu { model: GpuModel::compile(graph, sizes)?, devices: Mutex::new(Vec::new()) }))
    }
}

/// The kernels and the host program, and the GPUs they were loaded on (by ordinal), each
/// opened at its first run.
#[cfg(feature = "cuda")]
struct OnGpu {
    model: GpuModel,
    devices: Mutex<Vec<(usize, super::cuda::CudaDevice)>>,
}

#[cfg(feature = "cuda")]
impl OnGpu {
    /// Runs `f` with GPU `ordinal` ordered on `stream`.
    fn with_device<R>(&self, ordinal: usize, stream: u64, f: impl FnOnce(&mut super::cuda::CudaDevice) -> Result<R>) -> Result<R> {
        let mut devices = self.devices.lock().expect("not poisoned");
        let at = match devices.iter().position(|(o, _)| *o == ordinal) {
            Some(at) => at,
            None => {
                devices.push((ordinal, super::cuda::CudaDevice::open(&self.model, ordinal)?));
                devices.len() - 1
            }
        };
        let device = &mut devices[at].1;
        device.stream = stream as cudarc::driver::sys::CUstream;
        f(device)
    }
}

#[cfg(feature = "cuda")]
impl Program for OnGpu {
    fn run(&self, args: &[&Tensor]) -> Result<Vec<Tensor>> {
        self.with_device(0, 0, |device| self.model.run(device, args))
    }

    unsafe fn run_on_device(&self, args: &[TensorView], outs: &[TensorView], at: DeviceStream) -> Result<()> {
        // SAFETY: the caller's promise, passed on.
        self.with_device(at.ordinal, at.stream, |device| unsafe { self.model.run_in_place(device, args, outs) })
    }
}
