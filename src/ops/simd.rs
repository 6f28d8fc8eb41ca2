//! What the CPU can do, found once, and the element types the kernels widen to f32.
//!
//! A [`Cpu`] is made only by [`Cpu::detect`] (what this CPU has, detected once per process)
//! or by narrowing one ([`Cpu::portable`], [`Cpu::without_avx512`]), so a kernel handed a
//! `Cpu` may use every instruction set it names. A matrix chooses its `Cpu` when it is built
//! and keeps it; no kernel looks at the CPU's features again.

use half::{bf16, f16};

/// The instruction sets the kernels use, as found on this CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cpu {
    avx2: bool,
    avx512: bool,
    avx512_vnni: bool,
    avx512_vbmi: bool,
    avx512_min_vectors: usize,
}

impl Cpu {
    /// What this CPU has: AVX2 with FMA and F16C, AVX-512F, AVX-512 VNNI with BW and VL, and
    /// AVX-512 VBMI (x86-64 only), detected once.
    pub fn detect() -> Cpu {
        static CPU: std::sync::OnceLock<Cpu> = std::sync::OnceLock::new();
        *CPU.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                let avx2 = is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c");
                let avx512 = avx2 && is_x86_feature_detected!("avx512f");
                let avx512_vnni = avx512
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni");
                let avx512_vbmi = avx512_vnni && is_x86_feature_detected!("avx512vbmi");
                Cpu {
                    avx2,
                    avx512,
                    avx512_vnni,
                    avx512_vbmi,
                    avx512_min_vectors: avx512_min_vectors(),
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                Cpu::portable()
            }
        })
    }

    /// No vector instructions: the portable loops.
    pub fn portable() -> Cpu {
        Cpu {
            avx2: false,
            avx512: false,
            avx512_vnni: false,
            avx512_vbmi: false,
            avx512_min_vectors: 1,
        }
    }

    /// This one without AVX-512 (the AVX2 kernels, where it has them).
    pub fn without_avx512(self) -> Cpu {
        Cpu {
            avx512: false,
            avx512_vnni: false,
            avx512_vbmi: false,
            ..self
        }
    }

    /// This one without the 512-bit integer kernels of the quantized formats (their 256-bit
    /// VNNI kernels, where it has them).
    pub fn without_avx512_vbmi(self) -> Cpu {
        Cpu {
            avx512_vbmi: false,
            ..self
        }
    }

    /// Whether the AVX2 kernels run (AVX2, FMA and F16C).
    pub fn has_avx2(self) -> bool {
        self.avx2
    }

    /// Whether the AVX-512F kernels run.
    pub fn has_avx512(self) -> bool {
        self.avx512
    }

    /// Whether the 8-bit integer kernels of the quantized formats may use AVX-512 VNNI's
    /// `vpdpbusd` on 256-bit vectors (AVX-512F, BW, VL and VNNI).
    pub fn has_avx512_vnni(self) -> bool {
        self.avx512_vnni
    }

    /// Whether the quantized formats' 512-bit integer kernels run: AVX-512 VNNI (with F, BW
    /// and VL) and VBMI, whose byte permutes gather a vector's worth of blocks.
    pub fn has_avx512_vbmi(self) -> bool {
        self.avx512_vbmi
    }

    /// Vectors from which a product of rows takes the AVX-512 kernels: five on AMD family 19h
    /// (Zen 4, whose AVX-512 runs in 256-bit halves), one elsewhere.
    pub fn avx512_min_vectors(self) -> usize {
        self.avx512_min_vectors
    }

    /// Every `Cpu` this one can be narrowed to, this one first: the variants a kernel test
    /// runs against the portable loops.
    pub fn variants(self) -> Vec<Cpu> {
        let mut all = vec![self];
        if self.avx512_vbmi {
            all.push(self.without_avx512_vbmi());
        }
        if self.avx512 {
            all.push(self.without_avx512());
        }
        if self.avx2 {
            all.push(Cpu::portable());
        }
        all
    }
}

/// A weight element type: f32, f16 or bf16 (sealed).
pub trait Element: crate::storage::Plain + Default + std::fmt::Debug + sealed::Sealed {
    /// The type's name as the crate writes it (`f32`, `f16`, `bf16`).
    const NAME: &'static str;
    /// The value as f32.
    fn widen(self) -> f32;
    /// `v` rounded to nearest.
    fn narrow(v: f32) -> Self;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
}

impl Element for f32 {
    const NAME: &'static str = "f32";
    fn widen(self) -> f32 {
        self
    }
    fn narrow(v: f32) -> Self {
        v
    }
}

impl Element for f16 {
    const NAME: &'static str = "f16";
    fn widen(self) -> f32 {
        self.to_f32()
    }
    fn narrow(v: f32) -> Self {
        f16::from_f32(v)
    }
}

impl Element for bf16 {
    const NAME: &'static str = "bf16";
    fn widen(self) -> f32 {
        self.to_f32()
    }
    fn narrow(v: f32) -> Self {
        bf16::from_f32(v)
    }
}

/// Vectors from which these kernels are used on AMD Zen 4, whose AVX-512 runs on 256-bit
/// units. With fewer, a product is closer to a stream of the weights than to arithmetic,
/// and there the one-row AVX2 loops stream faster (docs/performance.md).
const MIN_VECTORS_ON_ZEN4: usize = 5;

/// Vectors from which a product of rows takes the AVX-512 kernels on this CPU (where it has
/// AVX-512F): from one, but on AMD Zen 4 from [`MIN_VECTORS_ON_ZEN4`] (the rule and its
/// measurements: docs/performance.md).
#[cfg(target_arch = "x86_64")]
fn avx512_min_vectors() -> usize {
    match amd_family() {
        Some(0x19) => MIN_VECTORS_ON_ZEN4,
        _ => 1,
    }
}

/// The CPU family of an AMD CPU (19h: Zen 3 and Zen 4, of which only Zen 4 has AVX-512),
/// `None` for other vendors.
#[cfg(target_arch = "x86_64")]
fn amd_family() -> Option<u32> {
    use std::arch::x86_64::__cpuid;
    // SAFETY: CPUID exists on every x86-64 CPU (older toolchains declare the intrinsic
    // unsafe, newer ones safe).
    #[allow(unused_unsafe)]
    let (vendor, signature) = unsafe { (__cpuid(0), __cpuid(1).eax) };
    let amd = (vendor.ebx, vendor.edx, vendor.ecx) == (0x6874_7541, 0x6974_6e65, 0x444d_4163);
    let base = (signature >> 8) & 0xf;
    let family = if base == 0xf {
        base + ((signature >> 20) & 0xff)
    } else {
        base
    };
    amd.then_some(family)
}

/// Widening loads of 8 values into one AVX2 register.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use half::{bf16, f16};
    use std::arch::x86_64::*;

    /// # Safety
    /// `p` must point to 8 readable f32; the CPU must have AVX.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn load_f32(p: *const f32) -> __m256 {
        // SAFETY: the caller guarantees 8 readable values at `p`; loadu has no alignment need.
        unsafe { _mm256_loadu_ps(p) }
    }

    /// # Safety
    /// `p` must point to 8 readable f16; the CPU must have F16C.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn load_f16(p: *const f16) -> __m256 {
        // SAFETY: 8 f16 = 16 readable bytes at `p` (caller); loadu has no alignment need.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)) }
    }

    /// # Safety
    /// `p` must point to 8 readable bf16; the CPU must have AVX2.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn load_bf16(p: *const bf16) -> __m256 {
        // SAFETY: 8 bf16 = 16 readable bytes at `p` (caller). A bf16 is the top half of an f32.
        unsafe {
            let h = _mm_loadu_si128(p as *const __m128i);
            _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
        }
    }
}

/// Widening loads of 16 values into one AVX-512 register.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use half::{bf16, f16};
    use std::arch::x86_64::*;

    /// # Safety
    /// `p` must point to 16 readable f32; the CPU must have AVX-512F.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn load_f32(p: *const f32) -> __m512 {
        // SAFETY: the caller guarantees 16 readable values at `p`; loadu has no alignment need.
        unsafe { _mm512_loadu_ps(p) }
    }

    /// # Safety
    /// `p` must point to 16 readable f16; the CPU must have AVX-512F.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn load_f16(p: *const f16) -> __m512 {
        // SAFETY: 16 f16 = 32 readable bytes at `p` (caller); loadu has no alignment need.
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i)) }
    }

    /// # Safety
    /// `p` must point to 16 readable bf16; the CPU must have AVX-512F.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn load_bf16(p: *const bf16) -> __m512 {
        // SAFETY: 16 bf16 = 32 readable bytes at `p` (caller). A bf16 is the top half of an
        // f32.
        unsafe {
            let h = _mm256_loadu_si256(p as *const __m256i);
            _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
        }
    }
}
