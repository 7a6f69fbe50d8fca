//! Statistics for A/B speed decisions: is a patched model faster than the unpatched one?
//!
//! Speed measurements on a GPU drift and jump between rounds, so a decision never compares
//! two means. The caller measures interleaved rounds (ABBA...) and passes, per round, the
//! throughput of the baseline and of the candidate. Each round gives one ratio
//! candidate / baseline; the summary is the median ratio and a percentile-bootstrap
//! confidence interval of that median. On one workload a candidate gains when the whole
//! interval lies above `1 + min_gain` and loses when it lies below `1 - min_gain`; over the
//! workloads asked for, it is kept when it gains on at least one and loses on none.

pub mod rng;

use crate::error::{Error, Result};
use rng::SplitMix64;

/// Fewer paired rounds than this give a bootstrap interval too coarse to act on.
pub const MIN_ROUNDS: usize = 3;

/// What the rounds of one workload say about a candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The whole interval lies above `1 + min_gain`.
    Gain,
    /// The whole interval lies below `1 + min_gain`, not all of it below `1 - min_gain`:
    /// more rounds will not make it a gain, nor is it clearly slower.
    NoGain,
    /// The whole interval lies below `1 - min_gain`: clearly slower.
    Loss,
    /// The interval straddles `1 + min_gain`, or there are too few rounds to say.
    Unsure,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Gain => "gain",
            Verdict::NoGain => "no_gain",
            Verdict::Loss => "loss",
            Verdict::Unsure => "unsure",
        }
    }
}

/// How to bootstrap: the interval's confidence level, the resample count and the seed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bootstrap {
    pub confidence: f64,
    pub resamples: usize,
    pub seed: u64,
}

impl Default for Bootstrap {
    fn default() -> Self {
        Bootstrap {
            confidence: 0.95,
            resamples: 2000,
            seed: 0,
        }
    }
}

impl Bootstrap {
    fn check(&self, op: &'static str) -> Result<()> {
        if !(self.confidence > 0.0 && self.confidence < 1.0) {
            return Err(Error::value(op, "confidence", "in (0, 1)", self.confidence));
        }
        if self.resamples == 0 {
            return Err(Error::value(op, "resamples", ">= 1", 0));
        }
        Ok(())
    }
}

/// The summary of paired rounds of one candidate against the baseline.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub rounds: usize,
    /// Median over rounds of candidate / baseline throughput; above 1 means faster.
    pub median_ratio: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    /// What the interval's lower bound must beat: `1 + min_gain`.
    pub threshold: f64,
    pub verdict: Verdict,
}

fn check_samples(op: &'static str, arg: &'static str, xs: &[f64]) -> Result<()> {
    if xs.is_empty() {
        return Err(Error::value(op, arg, "at least one value", "none"));
    }
    if let Some(bad) = xs.iter().find(|x| !x.is_finite()) {
        return Err(Error::value(op, arg, "finite values", bad));
    }
    Ok(())
}

/// Median of values already known to be finite and non-empty; sorts `xs` in place.
fn median_in_place(xs: &mut [f64]) -> f64 {
    xs.sort_unstable_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        0.5 * (xs[n / 2 - 1] + xs[n / 2])
    }
}

/// The median (mean of the two middle values for an even count).
pub fn median(xs: &[f64]) -> Result<f64> {
    check_samples("median", "values", xs)?;
    Ok(median_in_place(&mut xs.to_vec()))
}

/// Linear interpolation between order statistics (the common "type 7" quantile).
fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// Percentile-bootstrap confidence interval of the median of `xs`.
pub fn bootstrap_median_ci(xs: &[f64], boot: Bootstrap) -> Result<(f64, f64)> {
    const OP: &str = "bootstrap_median_ci";
    check_samples(OP, "values", xs)?;
    boot.check(OP)?;
    let mut rng = SplitMix64::new(boot.seed);
    let mut resample = vec![0.0; xs.len()];
    let mut medians: Vec<f64> = (0..boot.resamples)
        .map(|_| {
            for slot in resample.iter_mut() {
                *slot = xs[rng.below(xs.len())];
            }
            median_in_place(&mut resample)
        })
        .collect();
    medians.sort_unstable_by(f64::total_cmp);
    let tail = (1.0 - boot.confidence) / 2.0;
    Ok((
        quantile_sorted(&medians, tail),
        quantile_sorted(&medians, 1.0 - tail),
    ))
}

/// Per-round ratios candidate / baseline of throughputs measured in the same round.
pub fn paired_ratios(candidate: &[f64], baseline: &[f64]) -> Result<Vec<f64>> {
    const OP: &str = "paired_ratios";
    check_samples(OP, "candidate", candidate)?;
    check_samples(OP, "baseline", baseline)?;
    if candidate.len() != baseline.len() {
        return Err(Error::value(
            OP,
            "candidate",
            format!("one value per baseline round ({})", baseline.len()),
            format!("{} values", candidate.len()),
        ));
    }
    for (arg, xs) in [("candidate", candidate), ("baseline", baseline)] {
        if let Some(bad) = xs.iter().find(|&&x| x <= 0.0) {
            return Err(Error::value(OP, arg, "throughputs > 0", bad));
        }
    }
    Ok(candidate.iter().zip(baseline).map(|(c, b)| c / b).collect())
}

/// Compares paired rounds of throughputs (higher is better) and applies the decision rule.
pub fn compare(
    candidate: &[f64],
    baseline: &[f64],
    min_gain: f64,
    boot: Bootstrap,
) -> Result<Comparison> {
    if !(min_gain.is_finite() && min_gain >= 0.0) {
        return Err(Error::value("compare", "min_gain", ">= 0", min_gain));
    }
    let ratios = paired_ratios(candidate, baseline)?;
    let (ci_low, ci_high) = bootstrap_median_ci(&ratios, boot)?;
    let threshold = 1.0 + min_gain;
    let verdict = if ratios.len() < MIN_ROUNDS {
        Verdict::Unsure
    } else if ci_low > threshold {
        Verdict::Gain
    } else if ci_high < 1.0 - min_gain {
        Verdict::Loss
    } else if ci_high < threshold {
        Verdict::NoGain
    } else {
        Verdict::Unsure
    };
    Ok(Comparison {
        rounds: ratios.len(),
        median_ratio: median_in_place(&mut ratios.clone()),
        ci_low,
        ci_high,
        threshold,
        verdict,
    })
}

/// The decision over the workloads asked for, one comparison each: keep a candidate that
/// gains on at least one workload and loses on none. A candidate whose gain was never shown
/// is dropped, so too few rounds (budget) err towards leaving the model as it was.
pub fn keep(comparisons: &[Comparison]) -> bool {
    let any = |v: Verdict| comparisons.iter().any(|c| c.verdict == v);
    any(Verdict::Gain) && !any(Verdict::Loss)
}

/// True when more rounds cannot change [`keep`]: a loss was shown, or no workload is unsure.
pub fn settled(comparisons: &[Comparison]) -> bool {
    let any = |v: Verdict| comparisons.iter().any(|c| c.verdict == v);
    any(Verdict::Loss) || !any(Verdict::Unsure)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boot() -> Bootstrap {
        Bootstrap::default()
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]).unwrap(), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]).unwrap(), 2.5);
        assert_eq!(median(&[7.0]).unwrap(), 7.0);
    }

    #[test]
    fn median_rejects_empty_and_nan() {
        let e = median(&[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "median(): 'values' must be at least one value, got none"
        );
        assert!(median(&[1.0, f64::NAN]).is_err());
    }

    #[test]
    fn quantiles_interpolate() {
        let s = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(quantile_sorted(&s, 0.0), 1.0);
        assert_eq!(quantile_sorted(&s, 1.0), 5.0);
        assert_eq!(quantile_sorted(&s, 0.5), 3.0);
        assert!((quantile_sorted(&s, 0.1) - 1.4).abs() < 1e-12);
    }

    #[test]
    fn interval_brackets_the_median_and_is_reproducible() {
        let xs: Vec<f64> = (0..15).map(|i| 1.0 + 0.01 * f64::from(i)).collect();
        let (lo, hi) = bootstrap_median_ci(&xs, boot()).unwrap();
        let m = median(&xs).unwrap();
        assert!(lo <= m && m <= hi, "{lo} {m} {hi}");
        assert!(lo >= xs[0] && hi <= xs[14]);
        assert_eq!(bootstrap_median_ci(&xs, boot()).unwrap(), (lo, hi));
        let other = Bootstrap { seed: 1, ..boot() };
        let (lo1, hi1) = bootstrap_median_ci(&xs, other).unwrap();
        assert!(lo1 <= m && m <= hi1);
    }

    #[test]
    fn constant_samples_give_a_point_interval() {
        assert_eq!(bootstrap_median_ci(&[2.0; 6], boot()).unwrap(), (2.0, 2.0));
    }

    #[test]
    fn wider_confidence_gives_a_wider_interval() {
        let xs = [0.9, 1.3, 1.1, 0.95, 1.2, 1.05, 1.0, 1.25, 0.85, 1.15];
        let (l90, h90) = bootstrap_median_ci(
            &xs,
            Bootstrap {
                confidence: 0.5,
                ..boot()
            },
        )
        .unwrap();
        let (l99, h99) = bootstrap_median_ci(
            &xs,
            Bootstrap {
                confidence: 0.99,
                ..boot()
            },
        )
        .unwrap();
        assert!(l99 <= l90 && h90 <= h99);
    }

    #[test]
    fn bad_bootstrap_options_name_the_argument() {
        let e = bootstrap_median_ci(
            &[1.0, 2.0],
            Bootstrap {
                confidence: 1.0,
                ..boot()
            },
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "bootstrap_median_ci(): 'confidence' must be in (0, 1), got 1"
        );
        let e = bootstrap_median_ci(
            &[1.0],
            Bootstrap {
                resamples: 0,
                ..boot()
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("'resamples'"));
    }

    #[test]
    fn ratios_pair_rounds() {
        assert_eq!(
            paired_ratios(&[110.0, 90.0], &[100.0, 100.0]).unwrap(),
            vec![1.1, 0.9]
        );
        let e = paired_ratios(&[1.0], &[1.0, 2.0]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "paired_ratios(): 'candidate' must be one value per baseline round (2), got 1 values"
        );
        assert!(paired_ratios(&[1.0], &[0.0]).is_err());
    }

    #[test]
    fn a_clear_speedup_under_noise_is_kept() {
        // Baseline throughput jumps by +-20% between rounds; the candidate is 1.2x in
        // every round, so the paired ratios see through the drift.
        let base = [100.0, 120.0, 85.0, 110.0, 95.0, 118.0, 82.0, 105.0];
        let cand: Vec<f64> = base
            .iter()
            .enumerate()
            .map(|(i, b)| b * (1.2 + 0.02 * if i % 2 == 0 { 1.0 } else { -1.0 }))
            .collect();
        let c = compare(&cand, &base, 0.02, boot()).unwrap();
        assert_eq!(c.verdict, Verdict::Gain);
        assert_eq!(c.rounds, 8);
        assert!((c.median_ratio - 1.2).abs() < 0.03);
        assert!(c.ci_low > 1.02 && c.ci_high < 1.25);
    }

    #[test]
    fn a_slowdown_is_a_loss_a_small_one_no_gain_and_a_noisy_tie_unsure() {
        let base = [100.0, 101.0, 99.0, 100.0, 102.0];
        let slow: Vec<f64> = base.iter().map(|b| b * 0.8).collect();
        let c = compare(&slow, &base, 0.02, boot()).unwrap();
        assert_eq!(c.verdict, Verdict::Loss);
        let level: Vec<f64> = base.iter().map(|b| b * 1.001).collect();
        let c = compare(&level, &base, 0.02, boot()).unwrap();
        assert_eq!(c.verdict, Verdict::NoGain);
        // Ratios 0.95..1.05: the interval reaches both sides of 1.02.
        let noisy: Vec<f64> = base
            .iter()
            .zip([0.95, 1.05, 0.97, 1.04, 1.0])
            .map(|(b, r)| b * r)
            .collect();
        let c = compare(&noisy, &base, 0.02, boot()).unwrap();
        assert_eq!(c.verdict, Verdict::Unsure);
    }

    #[test]
    fn too_few_rounds_are_unsure() {
        let c = compare(&[200.0, 200.0], &[100.0, 100.0], 0.02, boot()).unwrap();
        assert_eq!(c.verdict, Verdict::Unsure);
        assert_eq!(c.median_ratio, 2.0);
    }

    fn verdict(v: Verdict) -> Comparison {
        Comparison {
            rounds: 5,
            median_ratio: 1.0,
            ci_low: 1.0,
            ci_high: 1.0,
            threshold: 1.02,
            verdict: v,
        }
    }

    #[test]
    fn keep_needs_a_gain_somewhere_and_no_loss_anywhere() {
        use Verdict::*;
        let case = |vs: &[Verdict]| {
            let cs: Vec<Comparison> = vs.iter().map(|&v| verdict(v)).collect();
            (keep(&cs), settled(&cs))
        };
        assert_eq!(case(&[Gain]), (true, true));
        assert_eq!(case(&[Gain, NoGain]), (true, true));
        assert_eq!(case(&[Gain, Unsure]), (true, false));
        assert_eq!(case(&[Gain, Loss]), (false, true));
        assert_eq!(case(&[NoGain, NoGain]), (false, true));
        assert_eq!(case(&[Unsure, NoGain]), (false, false));
        assert_eq!(case(&[Unsure, Loss]), (false, true));
        assert_eq!(case(&[]), (false, true));
    }

    #[test]
    fn negative_min_gain_is_refused() {
        let e = compare(&[1.0], &[1.0], -0.1, boot()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "compare(): 'min_gain' must be >= 0, got -0.1"
        );
    }
}
