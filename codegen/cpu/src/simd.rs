//! Which vector instructions this processor runs: the attention tiles, the selective scan and
//! the small products are each compiled for several and take the widest (detected once).

/// The instructions a hand-vectorised loop runs in.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Simd {
    Portable,
    /// AVX2 with FMA.
    Avx2,
    /// AVX-512 (F), with AVX2 and FMA.
    Avx512,
}

// `Simd` as the micro-tiles' const parameter.
pub(crate) const PORTABLE: u8 = 0;
pub(crate) const AVX2: u8 = 1;
pub(crate) const AVX512: u8 = 2;

impl Simd {
    /// The widest this processor runs.
    pub(crate) fn best() -> Simd {
        static BEST: std::sync::OnceLock<Simd> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| *Simd::available().last().expect("the portable build runs anywhere"))
    }

    /// Every build this processor runs, narrowest first.
    pub(crate) fn available() -> Vec<Simd> {
        let mut builds = vec![Simd::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") {
                builds.push(Simd::Avx2);
                if has!("avx512f") {
                    builds.push(Simd::Avx512);
                }
            }
        }
        builds
    }
}
