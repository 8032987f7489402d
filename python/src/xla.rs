//! A layer's graphs as an XLA FFI handler (`jax.ffi`, CPU): the typed custom-call ABI of XLA's
//! `xla/ffi/api/c_api.h` (API 0.3), the few structures tttc reads written out here. XLA calls
//! the handler with the call's buffers and its attribute `entry` (which compiled graph, an id from
//! [`register`]); the handler runs the graph on XLA's buffers in place. Errors go back as XLA
//! errors carrying tttc's one-line message; a panic is caught before it reaches XLA.

use std::ffi::{c_void, CString};
use std::sync::{Arc, Mutex};

use anyhow::{bail, ensure, Context, Result};
use tttc_ir::{DType, TensorView};
use tttc_runtime::Executable;

/// The compiled graphs the handler can run, by id.
static ENTRIES: Mutex<Vec<Arc<Executable>>> = Mutex::new(Vec::new());

/// Makes `exe` callable from XLA: its id, the value of the call's `entry` attribute.
pub fn register(exe: Arc<Executable>) -> i64 {
    let mut entries = ENTRIES.lock().expect("not poisoned");
    entries.push(exe);
    entries.len() as i64 - 1
}

const API_MAJOR: i32 = 0;
const API_MINOR: i32 = 3;
const EXTENSION_METADATA: i32 = 1;
const STAGE_EXECUTE: i32 = 3;
const ATTR_SCALAR: i32 = 3;
const ARG_BUFFER: i32 = 1;
const DATA_S64: i32 = 5;
const DATA_F32: i32 = 11;
const ERROR_INVALID_ARGUMENT: i32 = 3;

#[repr(C)]
struct ExtensionBase {
    struct_size: usize,
    kind: i32,
    next: *mut ExtensionBase,
}

#[repr(C)]
struct ApiVersion {
    struct_size: usize,
    extension_start: *mut ExtensionBase,
    major: i32,
    minor: i32,
}

#[repr(C)]
struct ErrorCreateArgs {
    struct_size: usize,
    extension_start: *mut ExtensionBase,
    message: *const std::ffi::c_char,
    code: i32,
}

/// The beginning of `XLA_FFI_Api`: what precedes its first function, then that function
/// (`XLA_FFI_Error_Create`), the only one tttc calls.
#[repr(C)]
struct Api {
    struct_size: usize,
    extension_start: *mut ExtensionBase,
    api_version: ApiVersion,
    internal_api: *const c_void,
    error_create: unsafe extern "C" fn(*mut ErrorCreateArgs) -> *mut c_void,
}

#[repr(C)]
struct Buffer {
    struct_size: usize,
    extension_start: *mut ExtensionBase,
    dtype: i32,
    data: *mut c_void,
    rank: i64,
    dims: *const i64,
}

/// `XLA_FFI_Args` and `XLA_FFI_Rets`, laid out alike.
#[repr(C)]
struct Buffers {
    struct_size: usize,
    extension_start: *mut ExtensionBase,
    size: i64,
    types: *const i32,
    values: *const *mut Buffer,
}

#[repr(C)]
struct ByteSpan {
    ptr: *const u8,
    len: usize,
}

#[repr(C)]
struct Scalar {
    dtype: i32,
    value: *const c_void,
}

#[repr(C)]
struct Attrs {
    struct_size: usize,
    extension_start: *mut ExtensionBase,
    size: i64,
    types: *const i32,
    names: *const *const ByteSpan,
    values: *const *const c_void,
}

#[repr(C)]
pub struct CallFrame {
    struct_size: usize,
    extension_start: *mut ExtensionBase,
    api: *const Api,
    ctx: *mut c_void,
    stage: i32,
    args: Buffers,
    rets: Buffers,
    attrs: Attrs,
    future: *mut c_void,
}

#[repr(C)]
struct Metadata {
    struct_size: usize,
    api_version: ApiVersion,
    traits: u32,
    state_type_id: i64,
}

#[repr(C)]
struct MetadataExtension {
    base: ExtensionBase,
    metadata: *mut Metadata,
}

/// The handler XLA calls (`XLA_FFI_Handler`): answers XLA's query for its API version, and at the
/// execute stage runs the graph the `entry` attribute names on the call's buffers.
///
/// # Safety
/// `frame` is a call frame XLA passes, valid for the call.
pub unsafe extern "C" fn layer_handler(frame: *mut CallFrame) -> *mut c_void {
    let frame = unsafe { &*frame };
    if !frame.extension_start.is_null() && unsafe { (*frame.extension_start).kind } == EXTENSION_METADATA {
        let metadata = unsafe { &mut *(*(frame.extension_start as *mut MetadataExtension)).metadata };
        metadata.api_version =
            ApiVersion { struct_size: std::mem::size_of::<ApiVersion>(), extension_start: std::ptr::null_mut(), major: API_MAJOR, minor: API_MINOR };
        metadata.traits = 0;
        metadata.state_type_id = 0;
        return std::ptr::null_mut();
    }
    if frame.stage != STAGE_EXECUTE {
        return std::ptr::null_mut();
    }
    let ran = std::panic::catch_unwind(|| unsafe { execute(frame) }).unwrap_or_else(|_| Err(anyhow::anyhow!("tttc panicked in an XLA call")));
    match ran {
        Ok(()) => std::ptr::null_mut(),
        Err(e) => unsafe { error(frame.api, &format!("{e:#}")) },
    }
}

/// An XLA error carrying `message`.
///
/// # Safety
/// `api` is XLA's API table from the call frame.
unsafe fn error(api: *const Api, message: &str) -> *mut c_void {
    let text = CString::new(message.replace('\0', " ")).expect("no NUL left");
    let mut args = ErrorCreateArgs {
        struct_size: std::mem::size_of::<ErrorCreateArgs>(),
        extension_start: std::ptr::null_mut(),
        message: text.as_ptr(),
        code: ERROR_INVALID_ARGUMENT,
    };
    unsafe { ((*api).error_create)(&mut args) }
}

/// Runs the entry the frame's `entry` attribute names on its argument and result buffers.
///
/// # Safety
/// The frame's buffers are XLA's, dense and row-major, valid for the call.
unsafe fn execute(frame: &CallFrame) -> Result<()> {
    let id = unsafe { entry_attribute(&frame.attrs) }?;
    let exe = ENTRIES.lock().expect("not poisoned").get(id as usize).cloned().with_context(|| format!("no compiled layer graph {id}"))?;
    let shapes = |bs: &Buffers| -> Result<Vec<(DType, Vec<usize>, *mut u8)>> {
        (0..bs.size as usize)
            .map(|i| {
                ensure!(unsafe { *bs.types.add(i) } == ARG_BUFFER, "argument {i} is not a buffer");
                let b = unsafe { &**bs.values.add(i) };
                let dtype = match b.dtype {
                    DATA_F32 => DType::F32,
                    DATA_S64 => DType::I64,
                    other => bail!("buffer {i} has XLA element type {other}: tttc's layers take float32"),
                };
                let dims = if b.rank == 0 { &[][..] } else { unsafe { std::slice::from_raw_parts(b.dims, b.rank as usize) } };
                Ok((dtype, dims.iter().map(|&d| d as usize).collect(), b.data as *mut u8))
            })
            .collect()
    };
    let (args, rets) = (shapes(&frame.args)?, shapes(&frame.rets)?);
    let expected = exe.output_types(&args.iter().map(|(d, s, _)| (*d, s.as_slice())).collect::<Vec<_>>())?;
    ensure!(expected.len() == rets.len(), "{} results, the graph has {}", rets.len(), expected.len());
    for ((dtype, shape), (d, s, _)) in expected.iter().zip(&rets) {
        ensure!(dtype == d && shape == s, "a result is {}{s:?}, the graph gives {}{shape:?}", d.name(), dtype.name());
    }
    let cpu = tttc_runtime::backend("cpu")?;
    // SAFETY: XLA's buffers, of the types and shapes checked; results apart from arguments.
    unsafe { exe.run_in_place(&views(&args), &views(&rets), cpu) }
}

fn views(buffers: &[(DType, Vec<usize>, *mut u8)]) -> Vec<TensorView<'_>> {
    buffers.iter().map(|(dtype, shape, ptr)| TensorView { dtype: *dtype, shape, ptr: *ptr }).collect()
}

/// The call's `entry` attribute: a 64-bit integer scalar.
///
/// # Safety
/// `attrs` is the call frame's.
unsafe fn entry_attribute(attrs: &Attrs) -> Result<i64> {
    for i in 0..attrs.size as usize {
        let name = unsafe { &**attrs.names.add(i) };
        if unsafe { std::slice::from_raw_parts(name.ptr, name.len) } != b"entry" {
            continue;
        }
        ensure!(unsafe { *attrs.types.add(i) } == ATTR_SCALAR, "the attribute entry is not a scalar");
        let scalar = unsafe { &*(*attrs.values.add(i) as *const Scalar) };
        ensure!(scalar.dtype == DATA_S64, "the attribute entry is not a 64-bit integer");
        return Ok(unsafe { *(scalar.value as *const i64) });
    }
    bail!("the call has no attribute entry")
}
