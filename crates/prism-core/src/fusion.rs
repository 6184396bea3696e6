//! Fusion of ranked lists: reciprocal rank fusion and weighted fusion of normalised scores.
//! Pure functions; the shard and the cluster coordinator both use them.

use std::collections::HashMap;
use std::hash::Hash;

use serde::{Deserialize, Serialize};

/// How a hybrid query combines its text and vector lists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
            _ => Ok(()),
        }
    }

    /// Fuses a text list and a vector list, each sorted best first with higher-is-better
    /// scores. Returns all documents, best first; ties break on the key for determinism.
    pub fn fuse<K: Eq + Hash + Ord + Clone>(
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
        let mut out: Vec<(K, f32)> = fused.into_iter().collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        out
    }
}

/// Scales scores to [0, 1]; a list whose scores are all equal maps to 1.
pub fn min_max_normalise<K: Clone>(list: &[(K, f32)]) -> Vec<(K, f32)> {
    let (min, max) = list
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), (_, s)| {
            (lo.min(*s), hi.max(*s))
        });
    list.iter()
        .map(|(k, s)| {
            let norm = if max > min {
                (s - min) / (max - min)
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

    fn list(items: &[(&'static str, f32)]) -> Vec<(&'static str, f32)> {
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
    fn rrf_ties_break_on_key() {
        let out = HybridStrategy::default().fuse(&list(&[("z", 1.0)]), &list(&[("y", 1.0)]));
        assert_eq!(out.iter().map(|x| x.0).collect::<Vec<_>>(), vec!["y", "z"]);
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
}
