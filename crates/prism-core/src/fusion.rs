//! Fusion of ranked lists: reciprocal rank fusion and weighted fusion of normalised scores.
//! Pure functions; the shard and the cluster coordinator both use them.

use std::collections::HashMap;
use std::hash::Hash;

use serde::{Deserialize, Serialize};

use crate::rank::{best_first, TieBreak};

/// How a hybrid query combines its text and vector lists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "strategy", rename_all = "lowercase", deny_unknown_fields)]
pub enum HybridStrategy {
    /// `score = Σ 1 / (rrf_k + rank)`, ranks from 1, over the lists a document appears in.
    Rrf {
        #[serde(default = "default_rrf_k")]
        rrf_k: f32,
    },
    /// `score = text_weight · norm(text) + vector_weight · norm(vector)`, each list min-max
    /// normalised to [0, 1]; a document missing from a list gets 0 for it.
    Weighted {
        #[serde(default = "default_half")]
        text_weight: f32,
        #[serde(default = "default_half")]
        vector_weight: f32,
    },
}

fn default_rrf_k() -> f32 {
    60.0
}
fn default_half() -> f32 {
    0.5
}

impl Default for HybridStrategy {
    fn default() -> Self {
        HybridStrategy::Rrf { rrf_k: 60.0 }
    }
}

impl HybridStrategy {
    /// Checks the parameters.
    pub fn validate(&self) -> Result<(), String> {
        match *self {
            HybridStrategy::Rrf { rrf_k } if !(rrf_k.is_finite() && rrf_k >= 0.0) => {
                Err("rrf_k must be a finite number >= 0".into())
            }
            HybridStrategy::Weighted {
                text_weight,
                vector_weight,
            } if !(text_weight.is_finite()
                && vector_weight.is_finite()
                && text_weight >= 0.0
                && vector_weight >= 0.0) =>
            {
                Err("text_weight and vector_weight must be finite numbers >= 0".into())
            }
            // A fused score is at most the sum of the weights (each normalised score is at
            // most 1), so a finite sum keeps every fused score finite.
            HybridStrategy::Weighted {
                text_weight,
                vector_weight,
            } if !(text_weight + vector_weight).is_finite() => Err(
                "text_weight + vector_weight must be a finite 32-bit float (at most 3.4e38)".into(),
            ),
            _ => Ok(()),
        }
    }

    /// Fuses a text list and a vector list, each in rank order with higher-is-better scores
    /// (see [`crate::rank`]). Returns all documents in rank order: by fused score, ties by the
    /// keys' id hashes, as every other list, so that a fusion on one index and on a
    /// federation's merged lists agree; the key's own order only separates colliding hashes.
    pub fn fuse<K: Eq + Hash + Ord + Clone + TieBreak>(
        &self,
        text: &[(K, f32)],
        vector: &[(K, f32)],
    ) -> Vec<(K, f32)> {
        let mut fused: HashMap<K, f32> = HashMap::new();
        match *self {
            HybridStrategy::Rrf { rrf_k } => {
                for list in [text, vector] {
                    for (rank, (key, _)) in list.iter().enumerate() {
                        *fused.entry(key.clone()).or_default() += 1.0 / (rrf_k + rank as f32 + 1.0);
                    }
                }
            }
            HybridStrategy::Weighted {
                text_weight,
                vector_weight,
            } => {
                for (list, weight) in [(text, text_weight), (vector, vector_weight)] {
                    for (key, norm) in min_max_normalise(list) {
                        *fused.entry(key).or_default() += weight * norm;
                    }
                }
            }
        }
        let mut out: Vec<(K, f32, u64)> = fused
            .into_iter()
            .map(|(key, score)| {
                let hash = key.id_hash();
                (key, score, hash)
            })
            .collect();
        out.sort_by(|a, b| best_first((a.1, a.2), (b.1, b.2)).then_with(|| a.0.cmp(&b.0)));
        out.into_iter()
            .map(|(key, score, _)| (key, score))
            .collect()
    }
}

/// Scales scores to [0, 1]; a list whose scores are all equal maps to 1. The arithmetic is
/// in f64, so that the spread of two finite f32 scores (up to twice `f32::MAX`) cannot
/// overflow into a NaN; a non-finite score, which no list should hold, counts as the nearest
/// finite one (NaN as the lowest).
pub fn min_max_normalise<K: Clone>(list: &[(K, f32)]) -> Vec<(K, f32)> {
    let finite = |s: f32| {
        if s.is_nan() {
            f64::from(f32::MIN)
        } else {
            f64::from(s.clamp(f32::MIN, f32::MAX))
        }
    };
    let (min, max) = list
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), (_, s)| {
            (lo.min(finite(*s)), hi.max(finite(*s)))
        });
    list.iter()
        .map(|(k, s)| {
            let norm = if max > min {
                ((finite(*s) - min) / (max - min)) as f32
            } else {
                1.0
            };
            (k.clone(), norm)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rank::id_hash;

    fn list<'a>(items: &[(&'a str, f32)]) -> Vec<(&'a str, f32)> {
        items.to_vec()
    }

    #[test]
    fn rrf_sums_reciprocal_ranks() {
        let text = list(&[("a", 9.0), ("b", 5.0), ("c", 1.0)]);
        let vector = list(&[("c", 0.9), ("a", 0.8)]);
        let out = HybridStrategy::Rrf { rrf_k: 60.0 }.fuse(&text, &vector);
        let score = |k| out.iter().find(|(x, _)| *x == k).unwrap().1;
        assert!((score("a") - (1.0 / 61.0 + 1.0 / 62.0)).abs() < 1e-7);
        assert!((score("b") - 1.0 / 62.0).abs() < 1e-7);
        assert!((score("c") - (1.0 / 63.0 + 1.0 / 61.0)).abs() < 1e-7);
        assert_eq!(
            out.iter().map(|x| x.0).collect::<Vec<_>>(),
            vec!["a", "c", "b"]
        );
    }

    #[test]
    fn ties_break_on_the_id_hash_not_the_key_order() {
        // Each document first in one list: equal RRF scores.
        let ids: Vec<String> = (0..20).map(|i| format!("doc-{i}")).collect();
        let mut unlike_id_order = 0;
        for pair in ids.windows(2) {
            let (a, b) = (pair[0].as_str(), pair[1].as_str());
            for (t, v) in [(a, b), (b, a)] {
                let out = HybridStrategy::default().fuse(&list(&[(t, 1.0)]), &list(&[(v, 1.0)]));
                let mut expected = vec![a, b];
                expected.sort_by_key(|id| id_hash(id));
                assert_eq!(out.iter().map(|x| x.0).collect::<Vec<_>>(), expected);
            }
            unlike_id_order += usize::from((a < b) != (id_hash(a) < id_hash(b)));
        }
        assert!(
            unlike_id_order > 0,
            "the ids must tell hash order from id order"
        );
    }

    #[test]
    fn ties_straddling_the_page_boundary_page_consistently() {
        // 40 documents, text and vector lists in opposite orders: RRF gives documents i and
        // 39 - i equal scores, so every fused score is tied with one other.
        let ids: Vec<String> = (0..40).map(|i| format!("d{i}")).collect();
        let text: Vec<(&str, f32)> = ids.iter().map(|id| (id.as_str(), 1.0)).collect();
        let vector: Vec<(&str, f32)> = ids.iter().rev().map(|id| (id.as_str(), 1.0)).collect();
        let strategy = HybridStrategy::default();
        let fused = strategy.fuse(&text, &vector);
        for pair in fused.windows(2) {
            let ((a, sa), (b, sb)) = (pair[0], pair[1]);
            assert!(
                sa > sb || (sa == sb && id_hash(a) < id_hash(b)),
                "{a} {sa} / {b} {sb}"
            );
        }
        assert_eq!(fused.len(), 40);
        // The lists swapped fuse identically (RRF is symmetric), ties included; pages cut
        // from the fused list never overlap or skip.
        assert_eq!(strategy.fuse(&vector, &text), fused);
        let pages: Vec<&str> = (0..4)
            .flat_map(|p| fused.iter().skip(p * 10).take(10).map(|x| x.0))
            .collect();
        assert_eq!(pages, fused.iter().map(|x| x.0).collect::<Vec<_>>());
        // Weighted fusion of lists with equal scores: all normalise to 1, all tie.
        let weighted = HybridStrategy::Weighted {
            text_weight: 0.5,
            vector_weight: 0.5,
        }
        .fuse(&text, &[]);
        let mut by_hash: Vec<&str> = ids.iter().map(String::as_str).collect();
        by_hash.sort_by_key(|id| id_hash(id));
        assert_eq!(weighted.iter().map(|x| x.0).collect::<Vec<_>>(), by_hash);
    }

    #[test]
    fn weighted_uses_normalised_scores() {
        let text = list(&[("a", 10.0), ("b", 6.0), ("c", 2.0)]);
        let vector = list(&[("c", 0.9), ("b", 0.5)]);
        let out = HybridStrategy::Weighted {
            text_weight: 0.3,
            vector_weight: 0.7,
        }
        .fuse(&text, &vector);
        // a: 0.3*1 = 0.3; b: 0.3*0.5 + 0.7*0 = 0.15; c: 0.3*0 + 0.7*1 = 0.7
        assert_eq!(
            out.iter().map(|x| x.0).collect::<Vec<_>>(),
            vec!["c", "a", "b"]
        );
        assert!((out[0].1 - 0.7).abs() < 1e-6);
        assert!((out[2].1 - 0.15).abs() < 1e-6);
    }

    #[test]
    fn bad_parameters_are_refused() {
        assert!(HybridStrategy::Rrf { rrf_k: f32::NAN }.validate().is_err());
        assert!(HybridStrategy::Weighted {
            text_weight: -1.0,
            vector_weight: 1.0
        }
        .validate()
        .is_err());
        let parsed: HybridStrategy = serde_json::from_str(
            r#"{"strategy":"weighted","text_weight":0.2,"vector_weight":0.8}"#,
        )
        .unwrap();
        assert_eq!(
            parsed,
            HybridStrategy::Weighted {
                text_weight: 0.2,
                vector_weight: 0.8
            }
        );
        assert!(serde_json::from_str::<HybridStrategy>(r#"{"strategy":"magic"}"#).is_err());
    }

    /// Extreme but finite scores and weights never fuse into a non-finite score, and the
    /// best document of both lists stays first.
    #[test]
    fn fusion_of_extreme_finite_scores_is_finite() {
        let text = list(&[("a", f32::MAX), ("b", 0.0), ("c", -f32::MAX)]);
        let vector = list(&[("a", 1e37), ("c", -1e37), ("b", -f32::MAX)]);
        for strategy in [
            HybridStrategy::Weighted {
                text_weight: 1.0,
                vector_weight: 1.0,
            },
            HybridStrategy::Weighted {
                text_weight: f32::MAX / 2.0,
                vector_weight: f32::MAX / 2.0,
            },
            HybridStrategy::Rrf { rrf_k: 0.0 },
        ] {
            strategy.validate().unwrap();
            let out = strategy.fuse(&text, &vector);
            assert!(
                out.iter().all(|(_, s)| s.is_finite()),
                "{strategy:?}: {out:?}"
            );
            assert_eq!(out[0].0, "a", "{strategy:?}: {out:?}");
        }
        // The largest rrf_k: ranks vanish in its rounding (every score ties), but stay finite.
        let out = HybridStrategy::Rrf { rrf_k: f32::MAX }.fuse(&text, &vector);
        assert!(
            out.iter().all(|(_, s)| s.is_finite() && *s > 0.0),
            "{out:?}"
        );
        // Weights whose sum overflows could overflow a fused score: refused.
        let err = HybridStrategy::Weighted {
            text_weight: f32::MAX,
            vector_weight: f32::MAX,
        }
        .validate()
        .unwrap_err();
        assert!(err.contains("finite"), "{err}");
        // A non-finite score (none should reach fusion) still normalises into [0, 1].
        let odd = list(&[("a", f32::INFINITY), ("b", 1.0), ("c", f32::NAN)]);
        let normalised = min_max_normalise(&odd);
        assert!(
            normalised.iter().all(|(_, s)| (0.0..=1.0).contains(s)),
            "{normalised:?}"
        );
    }
}
