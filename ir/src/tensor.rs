//! Dense row-major tensors, the values the interpreter computes with.

use std::fmt;

use crate::types::DType;

#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    F32(Vec<f32>),
    /// f32 graph values when the interpreter runs in f64 (finite-difference checks).
    F64(Vec<f64>),
    I64(Vec<i64>),
}

/// A dense row-major tensor in memory its caller owns (a framework's tensor, used in place): its
/// element type, its shape and the address of its first element.
#[derive(Clone, Copy, Debug)]
pub struct TensorView<'a> {
    pub dtype: DType,
    pub shape: &'a [usize],
    pub ptr: *mut u8,
}

impl TensorView<'_> {
    /// The view's elements copied into a tensor of their own.
    ///
    /// # Safety
    /// `ptr` points at dense data of the view's type and shape.
    pub unsafe fn copied(&self) -> Tensor {
        let n = self.shape.iter().product();
        let shape = self.shape.to_vec();
        match self.dtype {
            DType::F32 => Tensor::f32(shape, unsafe { std::slice::from_raw_parts(self.ptr as *const f32, n) }.to_vec()),
            DType::I64 => Tensor::i64(shape, unsafe { std::slice::from_raw_parts(self.ptr as *const i64, n) }.to_vec()),
        }
    }
}

impl Tensor {
    /// This tensor as a view, for code that takes the caller's memory: compiled code reads it in
    /// place and writes it only when it is an output (then `self` must be the only reference).
    pub fn view(&self) -> TensorView<'_> {
        TensorView { dtype: self.dtype(), shape: &self.shape, ptr: self.as_ptr() as *mut u8 }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Data,
}

impl Tensor {
    pub fn f32(shape: Vec<usize>, values: Vec<f32>) -> Tensor {
        assert_eq!(shape.iter().product::<usize>(), values.len(), "shape and data disagree");
        Tensor { shape, data: Data::F32(values) }
    }

    pub fn f64(shape: Vec<usize>, values: Vec<f64>) -> Tensor {
        assert_eq!(shape.iter().product::<usize>(), values.len(), "shape and data disagree");
        Tensor { shape, data: Data::F64(values) }
    }

    pub fn i64(shape: Vec<usize>, values: Vec<i64>) -> Tensor {
        assert_eq!(shape.iter().product::<usize>(), values.len(), "shape and data disagree");
        Tensor { shape, data: Data::I64(values) }
    }

    /// Zeros of an IR element type.
    pub fn zeros(dtype: DType, shape: Vec<usize>) -> Tensor {
        let n = shape.iter().product();
        match dtype {
            DType::F32 => Tensor::f32(shape, vec![0.0; n]),
            DType::I64 => Tensor::i64(shape, vec![0; n]),
        }
    }

    /// Where the elements start, for compiled code that reads them in place.
    pub fn as_ptr(&self) -> *const u8 {
        match &self.data {
            Data::F32(v) => v.as_ptr() as *const u8,
            Data::F64(v) => v.as_ptr() as *const u8,
            Data::I64(v) => v.as_ptr() as *const u8,
        }
    }

    /// Where the elements start, for compiled code that writes them in place.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        match &mut self.data {
            Data::F32(v) => v.as_mut_ptr() as *mut u8,
            Data::F64(v) => v.as_mut_ptr() as *mut u8,
            Data::I64(v) => v.as_mut_ptr() as *mut u8,
        }
    }

    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The IR element type this tensor holds (f64 data is an f32 value computed in f64).
    pub fn dtype(&self) -> DType {
        match self.data {
            Data::F32(_) | Data::F64(_) => DType::F32,
            Data::I64(_) => DType::I64,
        }
    }

    /// Float data as f32 (rounding f64); `None` for integer tensors.
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        match &self.data {
            Data::F32(v) => Some(v.clone()),
            Data::F64(v) => Some(v.iter().map(|&x| x as f32).collect()),
            Data::I64(_) => None,
        }
    }

    /// Float data as f64; `None` for integer tensors.
    pub fn to_f64(&self) -> Option<Vec<f64>> {
        match &self.data {
            Data::F32(v) => Some(v.iter().map(|&x| x as f64).collect()),
            Data::F64(v) => Some(v.clone()),
            Data::I64(_) => None,
        }
    }

    /// The data, when it is f32.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            Data::F32(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<&[i64]> {
        match &self.data {
            Data::I64(v) => Some(v),
            _ => None,
        }
    }
}

impl fmt::Display for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.data {
            Data::F32(_) => "f32",
            Data::F64(_) => "f64",
            Data::I64(_) => "i64",
        };
        write!(f, "{kind}{:?}", self.shape)
    }
}
