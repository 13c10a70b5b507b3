//! Trimming task vectors before they are combined, per tensor and per input (a stack (N, …)):
//! magnitude (TIES: keep the k = ⌊density·n⌋ largest |τ|), random (DARE: keep each entry with
//! probability density), breadcrumbs (drop the ⌊gamma·n⌋ largest and the smallest, keep ⌊density·n⌋)
//! and DELLA (keep with a probability from density − ε to density + ε by the entry's magnitude rank
//! in its row). An input with density 1 is left as it is.
//!
//! Rescaling: under PEFT's semantics DARE divides the kept entries by density and DELLA by their keep
//! probability; under mergekit's, `rescale` scales each trimmed vector back to the L1 norm it had.

use super::{Semantics, TensorSettings};
use crate::error::Result;
use crate::ops::merge as mops;
use crate::tensor::Tensor;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Magnitude,
    Random,
    Breadcrumbs,
    Della,
}

/// Trims the stack `x` (N, …) of task vectors in place.
pub async fn apply(kind: Kind, x: &mut Tensor, s: &TensorSettings) -> Result<()> {
    let inputs = x.dim(0);
    let n = x.numel() / inputs;
    let dev = x.device();
    if s.density.iter().all(|&d| d >= 1.0) {
        return Ok(());
    }
    let l1_match = s.semantics == Semantics::Mergekit && s.rescale;
    let pairs: Vec<(usize, usize)> = (0..inputs).map(|i| (i, i)).collect();
    let before = if l1_match { mops::dots(x, &pairs, true).await? } else { vec![] };
    // The bit patterns of the k-th largest |τ| of each input (k clamped into 1..=n).
    let keep_top = |k: &[usize]| -> Result<Tensor> {
        let ks: Vec<usize> = k.iter().map(|&k| k.clamp(1, n)).collect();
        mops::kth_largest(x, &ks)
    };
    match kind {
        Kind::Magnitude => {
            let ks: Vec<usize> =
                s.density.iter().map(|&d| if d >= 1.0 { n } else { (d as f64 * n as f64) as usize }).collect();
            let lo = if ks.contains(&0) {
                // Inputs whose k is 0 keep nothing: a threshold above every finite |τ|.
                let mut bits = host_bits(&keep_top(&ks)?).await?;
                for (b, &k) in bits.iter_mut().zip(&ks) {
                    if k == 0 {
                        *b = u32::MAX;
                    }
                }
                mops::thresholds(&dev, &bits)?
            } else {
                keep_top(&ks)?
            };
            mops::trim(x, &lo, None)?;
        }
        Kind::Breadcrumbs => {
            let mut top = Vec::new();
            let mut keep = Vec::new();
            for &d in &s.density {
                if d >= 1.0 {
                    top.push(0);
                    keep.push(n);
                    continue;
                }
                let target = (d as f64 * n as f64) as usize;
                let mut n_top = (s.gamma as f64 * n as f64) as usize;
                if target + n_top > n {
                    n_top = n - target;
                }
                top.push(n_top);
                keep.push(target);
            }
            // Keep ranks n_top+1 ..= n_top+target (from the largest): |τ| below the n_top-th largest
            // and at least the (n_top+target)-th.
            let lo_k: Vec<usize> = top.iter().zip(&keep).map(|(&t, &k)| t + k).collect();
            let mut lo = host_bits(&keep_top(&lo_k)?).await?;
            let mut hi = host_bits(&keep_top(&top)?).await?;
            for i in 0..inputs {
                if lo_k[i] == 0 {
                    lo[i] = u32::MAX;
                }
                if top[i] == 0 {
                    hi[i] = u32::MAX;
                }
            }
            mops::trim(x, &mops::thresholds(&dev, &lo)?, Some(&mops::thresholds(&dev, &hi)?))?;
        }
        Kind::Random => {
            let prob = dev.tensor(&s.density.iter().map(|&d| d.min(1.0)).collect::<Vec<_>>(), &[inputs])?;
            mops::dare(x, &prob, s.seed, s.semantics == Semantics::Peft && s.rescale)?;
        }
        Kind::Della => {
            // Inputs at density 1 get probability 1 everywhere (epsilon 0 for them).
            let dens: Vec<f32> = s.density.iter().map(|&d| d.min(1.0)).collect();
            let eps: Vec<f32> = s.density.iter().map(|&d| if d >= 1.0 { 0.0 } else { s.epsilon }).collect();
            let prob = mops::rank_prob(x, &dens, &eps)?;
            mops::dare(x, &prob, s.seed, s.semantics == Semantics::Peft && s.rescale)?;
        }
    }
    if l1_match {
        let after = mops::dots(x, &pairs, true).await?;
        let (num, den): (Vec<f32>, Vec<f32>) = before
            .iter()
            .zip(&after)
            .zip(&s.density)
            .map(|((&b, &a), &d)| if b < 1e-7 || a < 1e-7 || d >= 1.0 { (1.0, 0.0) } else { (b as f32, a as f32) })
            .unzip();
        mops::scale_rows(x, &num, &den)?;
    }
    Ok(())
}

async fn host_bits(state: &Tensor) -> Result<Vec<u32>> {
    Ok(state.to_vec_u32().await?.chunks(2).map(|c| c[0]).collect())
}
