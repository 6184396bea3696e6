//! Document routing: which shard owns an id. Pure and stable across versions and machines.

use xxhash_rust::xxh3::xxh3_64;

/// A hash of a document id that never changes between versions, platforms or processes.
pub fn stable_hash(id: &str) -> u64 {
    xxh3_64(id.as_bytes())
}

/// The shard that owns `id` in a collection of `num_shards` shards.
pub fn shard_for(id: &str, num_shards: u32) -> u32 {
    assert!(num_shards > 0, "a collection has at least one shard");
    (stable_hash(id) % u64::from(num_shards)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_pinned_so_routing_never_changes_between_releases() {
        // If this value changes, existing clusters would route ids to the wrong shards.
        assert_eq!(stable_hash("doc1"), xxh3_64(b"doc1"));
        assert_eq!(stable_hash(""), 0x2d06800538d394c2);
    }

    #[test]
    fn shards_are_in_range_and_spread() {
        let mut counts = [0u32; 4];
        for i in 0..4000 {
            let s = shard_for(&format!("doc-{i}"), 4);
            counts[s as usize] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "uneven spread {counts:?}");
        }
    }
}
