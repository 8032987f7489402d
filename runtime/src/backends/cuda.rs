//! The CUDA driver as a [`Device`]: the model's PTX module loaded into a GPU's primary context
//! (the one PyTorch and JAX use), memory allocated, copied and kernels launched in order on one
//! stream (the default stream, or a framework's current one). The driver library is loaded at run
//! time, so tttc builds and runs without CUDA; `--backend cuda` on a machine without a GPU fails
//! in one line.

use std::ffi::c_void;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use cudarc::driver::{result, sys, CudaContext, CudaFunction};
use tttc_ptx::model::{Device, GpuModel};

pub struct CudaDevice {
    ctx: Arc<CudaContext>,
    functions: Vec<CudaFunction>,
    /// The stream every copy, allocation and launch is ordered on (null: the default stream).
    pub stream: sys::CUstream,
}

// SAFETY: the stream is a handle the driver accepts from any thread; the context is bound to the
// calling thread before each use.
unsafe impl Send for CudaDevice {}

impl CudaDevice {
    /// Opens GPU `ordinal` and loads `model`'s kernels for its architecture (sm_90 on compute
    /// capability 9.x and later, sm_80 on 8.x).
    pub fn open(model: &GpuModel, ordinal: usize) -> Result<CudaDevice> {
        // Without this check the first driver call panics when libcuda.so is missing.
        if !unsafe { sys::is_culib_present() } {
            bail!("--backend cuda: no CUDA driver (libcuda.so) on this machine");
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| anyhow!("--backend cuda: no usable GPU {ordinal} ({e})"))?;
        let (major, minor) = ctx.compute_capability().map_err(|e| anyhow!("--backend cuda: {e}"))?;
        let target = match major {
            8 => "sm_80",
            m if m >= 9 => "sm_90",
            _ => bail!("--backend cuda: the GPU has compute capability {major}.{minor}; tttc's kernels need 8.0 or later"),
        };
        let module = ctx.load_module(cudarc::nvrtc::Ptx::from_src(model.module(target).to_text())).context("loading the PTX module")?;
        let functions = model.kernels.iter().map(|k| module.load_function(&k.name).with_context(|| format!("kernel {}", k.name))).collect::<Result<_>>()?;
        Ok(CudaDevice { ctx, functions, stream: std::ptr::null_mut() })
    }
}

impl Device for CudaDevice {
    fn alloc(&mut self, bytes: usize) -> Result<u64> {
        self.ctx.bind_to_thread()?;
        // Zeroed, as the model's status word must start at 0.
        unsafe {
            let p = result::malloc_async(self.stream, bytes)?;
            result::memset_d8_async(p, 0, bytes, self.stream)?;
            Ok(p)
        }
    }

    fn free(&mut self, ptr: u64) {
        let _ = self.ctx.bind_to_thread();
        let _ = unsafe { result::free_async(ptr, self.stream) };
    }

    fn upload(&mut self, ptr: u64, bytes: &[u8]) -> Result<()> {
        self.ctx.bind_to_thread()?;
        unsafe { result::memcpy_htod_async(ptr, bytes, self.stream) }?;
        Ok(())
    }

    fn download(&mut self, ptr: u64, len: usize) -> Result<Vec<u8>> {
        self.ctx.bind_to_thread()?;
        let mut out = vec![0u8; len];
        unsafe {
            result::memcpy_dtoh_async(&mut out, ptr, self.stream)?;
            result::stream::synchronize(self.stream)?;
        }
        Ok(out)
    }

    fn launch(&mut self, kernel: usize, grid: [u32; 3], block: [u32; 3], params: &[u64]) -> Result<()> {
        self.ctx.bind_to_thread()?;
        let mut values = params.to_vec();
        let mut pointers: Vec<*mut c_void> = values.iter_mut().map(|v| v as *mut u64 as *mut c_void).collect();
        // SAFETY: every parameter is a u64 device pointer into memory on this device, as the
        // kernel declares; the values outlive the call (the driver copies them at launch).
        unsafe {
            result::launch_kernel(
                self.functions[kernel].cu_function(),
                (grid[0], grid[1], grid[2]),
                (block[0], block[1], block[2]),
                0,
                self.stream,
                &mut pointers,
            )?;
        }
        Ok(())
    }
}
