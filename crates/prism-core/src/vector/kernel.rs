//! Distance kernels for the HNSW graph: f32 dot products and squared Euclidean distances that
//! accumulate in f32, as hnswlib's do. usearch's bundled kernels (numkong) widen every f32
//! product to f64, which halves the lanes of each instruction: they were 59% of a vector
//! search's server time on nave-kjv (384 dimensions). The widest instruction set the CPU has
//! is chosen once, at the first call.

use std::sync::OnceLock;

/// A distance kernel over two slices of equal length.
pub type Kernel = fn(&[f32], &[f32]) -> f32;

/// The fastest dot product this CPU runs.
pub fn dot() -> Kernel {
    static CHOSEN: OnceLock<Kernel> = OnceLock::new();
    *CHOSEN.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return x86::dot_avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return x86::dot_avx2;
            }
        }
        dot_portable
    })
}

/// The fastest squared Euclidean distance this CPU runs.
pub fn l2_squared() -> Kernel {
    static CHOSEN: OnceLock<Kernel> = OnceLock::new();
    *CHOSEN.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return x86::l2_avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return x86::l2_avx2;
            }
        }
        l2_portable
    })
}

/// Eight independent sums, which the compiler keeps in vector registers on any target.
pub fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for l in 0..8 {
            lanes[l] += a[c * 8 + l] * b[c * 8 + l];
        }
    }
    let mut sum: f32 = lanes.iter().sum();
    for i in chunks * 8..a.len() {
        sum += a[i] * b[i];
    }
    sum
}

pub fn l2_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for l in 0..8 {
            let d = a[c * 8 + l] - b[c * 8 + l];
            lanes[l] += d * d;
        }
    }
    let mut sum: f32 = lanes.iter().sum();
    for i in chunks * 8..a.len() {
        let d = a[i] - b[i];
        sum += d * d;
    }
    sum
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Two accumulators of 16 lanes hide the latency of the fused multiply-add.
    pub fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        // SAFETY: chosen only where the CPU reports AVX-512F.
        unsafe { dot_avx512_unchecked(a, b) }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn dot_avx512_unchecked(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let (mut s0, mut s1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let mut i = 0;
        // SAFETY (every load): i + 16 (or the masked tail) stays within both slices.
        while i + 32 <= n {
            s0 = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)), s0);
            s1 = _mm512_fmadd_ps(
                _mm512_loadu_ps(pa.add(i + 16)),
                _mm512_loadu_ps(pb.add(i + 16)),
                s1,
            );
            i += 32;
        }
        while i + 16 <= n {
            s0 = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)), s0);
            i += 16;
        }
        if i < n {
            let mask: __mmask16 = (1u16 << (n - i)) - 1;
            let x = _mm512_maskz_loadu_ps(mask, pa.add(i));
            let y = _mm512_maskz_loadu_ps(mask, pb.add(i));
            s1 = _mm512_fmadd_ps(x, y, s1);
        }
        _mm512_reduce_add_ps(_mm512_add_ps(s0, s1))
    }

    pub fn l2_avx512(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        // SAFETY: chosen only where the CPU reports AVX-512F.
        unsafe { l2_avx512_unchecked(a, b) }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn l2_avx512_unchecked(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let (mut s0, mut s1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let mut i = 0;
        while i + 32 <= n {
            let d0 = _mm512_sub_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)));
            let d1 = _mm512_sub_ps(
                _mm512_loadu_ps(pa.add(i + 16)),
                _mm512_loadu_ps(pb.add(i + 16)),
            );
            s0 = _mm512_fmadd_ps(d0, d0, s0);
            s1 = _mm512_fmadd_ps(d1, d1, s1);
            i += 32;
        }
        while i + 16 <= n {
            let d = _mm512_sub_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)));
            s0 = _mm512_fmadd_ps(d, d, s0);
            i += 16;
        }
        if i < n {
            let mask: __mmask16 = (1u16 << (n - i)) - 1;
            let d = _mm512_sub_ps(
                _mm512_maskz_loadu_ps(mask, pa.add(i)),
                _mm512_maskz_loadu_ps(mask, pb.add(i)),
            );
            s1 = _mm512_fmadd_ps(d, d, s1);
        }
        _mm512_reduce_add_ps(_mm512_add_ps(s0, s1))
    }

    pub fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        // SAFETY: chosen only where the CPU reports AVX2 and FMA.
        unsafe { dot_avx2_unchecked(a, b) }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_avx2_unchecked(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        while i + 16 <= n {
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), s0);
            s1 = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i + 8)),
                _mm256_loadu_ps(pb.add(i + 8)),
                s1,
            );
            i += 16;
        }
        let mut sum = horizontal_sum(_mm256_add_ps(s0, s1));
        while i < n {
            sum += *pa.add(i) * *pb.add(i);
            i += 1;
        }
        sum
    }

    pub fn l2_avx2(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        // SAFETY: chosen only where the CPU reports AVX2 and FMA.
        unsafe { l2_avx2_unchecked(a, b) }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn l2_avx2_unchecked(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        while i + 16 <= n {
            let d0 = _mm256_sub_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)));
            let d1 = _mm256_sub_ps(
                _mm256_loadu_ps(pa.add(i + 8)),
                _mm256_loadu_ps(pb.add(i + 8)),
            );
            s0 = _mm256_fmadd_ps(d0, d0, s0);
            s1 = _mm256_fmadd_ps(d1, d1, s1);
            i += 16;
        }
        let mut sum = horizontal_sum(_mm256_add_ps(s0, s1));
        while i < n {
            let d = *pa.add(i) - *pb.add(i);
            sum += d * d;
            i += 1;
        }
        sum
    }

    #[target_feature(enable = "avx2")]
    unsafe fn horizontal_sum(v: __m256) -> f32 {
        let folded = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let folded = _mm_add_ps(folded, _mm_movehl_ps(folded, folded));
        let folded = _mm_add_ss(folded, _mm_shuffle_ps(folded, folded, 1));
        _mm_cvtss_f32(folded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference_dot(a: &[f32], b: &[f32]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| f64::from(*x) * f64::from(*y))
            .sum()
    }

    fn reference_l2(a: &[f32], b: &[f32]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
            .sum()
    }

    /// Every kernel this CPU can run, at every length around the vector widths, against an
    /// f64 reference.
    #[test]
    fn every_kernel_matches_an_f64_reference_at_every_length() {
        let mut kernels: Vec<(&str, Kernel, Kernel)> =
            vec![("portable", dot_portable, l2_portable)];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                kernels.push(("avx512", x86::dot_avx512, x86::l2_avx512));
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                kernels.push(("avx2", x86::dot_avx2, x86::l2_avx2));
            }
        }
        kernels.push(("chosen", dot(), l2_squared()));
        for len in (0..70).chain([100, 384, 784, 1536]) {
            let a: Vec<f32> = (0..len)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 61.0)
                .collect();
            let b: Vec<f32> = (0..len)
                .map(|i| ((i * 53 % 89) as f32 - 44.0) / 47.0)
                .collect();
            let (want_dot, want_l2) = (reference_dot(&a, &b), reference_l2(&a, &b));
            for (name, dot, l2) in &kernels {
                let tolerance = 1e-5 * (1.0 + len as f64);
                assert!(
                    (f64::from(dot(&a, &b)) - want_dot).abs() <= tolerance,
                    "{name} dot at {len}: {} vs {want_dot}",
                    dot(&a, &b)
                );
                assert!(
                    (f64::from(l2(&a, &b)) - want_l2).abs() <= tolerance,
                    "{name} l2 at {len}: {} vs {want_l2}",
                    l2(&a, &b)
                );
            }
        }
    }
}
