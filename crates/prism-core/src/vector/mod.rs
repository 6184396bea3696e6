//! The vector index of one field in one shard copy: an HNSW graph (usearch) keyed by the
//! document version key. Deletes are tombstones in the graph; keys that are no longer live are
//! also excluded at search time by the caller's filter.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::RwLock;
use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

use crate::error::{Error, Result};
use crate::schema::{Distance, VectorParams};

pub mod kernel;

/// An HNSW index over f32 vectors of one dimension and distance, safe under any mix of
/// concurrent search, get, insert, remove and growth.
///
/// usearch gives every insert and search one of a fixed pool of per-thread contexts, fails
/// ("Reserve capacity ahead of …") when the pool is empty, and must not reallocate
/// (`reserve`) while any other call runs. So:
/// - `structure` is held shared by every call and exclusively by `reserve` and by removal
///   (removal frees slots that a concurrent insert could reuse);
/// - `contexts` hands out the pool's permits, so a caller beyond the pool waits for one
///   instead of failing.
pub struct VectorIndex {
    params: VectorParams,
    index: Index,
    /// A cosine field's index built with usearch's inner product: vectors go in, and queries
    /// are searched, unit-normalized, one dot product per candidate against the cosine
    /// kernel's three. Indexes built with usearch's cosine metric hold vectors as written.
    normalize: bool,
    /// The norm of every vector a normalizing index holds, so that [`VectorIndex::get`]
    /// returns what was written without a second copy of the vectors. Saved beside the graph.
    norms: RwLock<HashMap<u64, f64>>,
    /// Slots in use: adds less removals (usearch reuses removed slots).
    slots: AtomicUsize,
    structure: RwLock<()>,
    contexts: ContextPool,
    /// Contexts reserved in usearch, fixed for the index's life: the pool hands out as many
    /// permits, so usearch must keep as many contexts through every growth.
    context_count: usize,
}

/// Permits for usearch's per-thread contexts: a bounded channel holding one token a context.
struct ContextPool {
    give: Sender<()>,
    take: Receiver<()>,
}

impl ContextPool {
    fn new(size: usize) -> Self {
        let (give, take) = crossbeam_channel::bounded(size);
        for _ in 0..size {
            give.send(()).expect("the pool has room for every token");
        }
        ContextPool { give, take }
    }

    fn acquire(&self) -> ContextPermit<'_> {
        self.take.recv().expect("the pool owns both ends");
        ContextPermit(self)
    }
}

struct ContextPermit<'a>(&'a ContextPool);

impl Drop for ContextPermit<'_> {
    fn drop(&mut self) {
        let _ = self.0.give.send(());
    }
}

/// Contexts reserved per index: enough for the writer's parallel inserts and the searches
/// of every core at once. Each costs a visited-set bitmap of `capacity / 8` bytes.
fn context_count() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores * 2).max(4)
}

fn options(params: &VectorParams, metric: MetricKind) -> IndexOptions {
    IndexOptions {
        dimensions: params.dimension,
        metric,
        quantization: ScalarKind::F32,
        connectivity: params.m,
        expansion_add: params.ef_construction,
        expansion_search: params.ef_search,
        multi: false,
    }
}

fn vector_err(e: impl std::fmt::Display) -> Error {
    Error::Vector(e.to_string())
}

impl VectorIndex {
    fn with_index(
        params: VectorParams,
        mut index: Index,
        slots: usize,
        norms: HashMap<u64, f64>,
    ) -> Result<Self> {
        // The inner-product and L2 metrics run this crate's kernels (see [`kernel`]); a file
        // keeps its metric kind, so a load installs them again.
        let dimension = params.dimension;
        // The kernel, and how its value becomes usearch's distance.
        type Metric = (kernel::Kernel, fn(f32) -> f32);
        let metric: Option<Metric> = match index.metric_kind() {
            MetricKind::IP => Some((kernel::dot(), |dot| 1.0 - dot)),
            MetricKind::L2sq => Some((kernel::l2_squared(), |l2| l2)),
            _ => None,
        };
        if let Some((measure, to_distance)) = metric {
            index.change_metric::<f32>(Box::new(move |a, b| {
                // SAFETY: usearch passes two vectors of the index's dimension.
                let (a, b) = unsafe {
                    (
                        std::slice::from_raw_parts(a, dimension),
                        std::slice::from_raw_parts(b, dimension),
                    )
                };
                to_distance(measure(a, b))
            }));
        }
        let contexts = context_count();
        index
            .reserve_capacity_and_threads((slots * 2).max(1024), contexts)
            .map_err(vector_err)?;
        Ok(VectorIndex {
            normalize: params.distance == Distance::Cosine && index.metric_kind() == MetricKind::IP,
            norms: RwLock::new(norms),
            params,
            index,
            slots: AtomicUsize::new(slots),
            structure: RwLock::new(()),
            contexts: ContextPool::new(contexts),
            context_count: contexts,
        })
    }

    /// Creates an empty index. A cosine field's holds unit-normalized vectors and their norms
    /// and is searched with inner product.
    pub fn new(params: VectorParams) -> Result<Self> {
        let metric = match params.distance {
            Distance::Cosine | Distance::Dot => MetricKind::IP,
            Distance::L2 => MetricKind::L2sq,
        };
        let index = Index::new(&options(&params, metric)).map_err(vector_err)?;
        Self::with_index(params, index, 0, HashMap::new())
    }

    /// Creates an empty cosine index of usearch's cosine metric, which holds vectors as
    /// written: what shards created before normalization have.
    #[cfg(test)]
    fn new_with_cosine_metric(params: VectorParams) -> Result<Self> {
        let index = Index::new(&options(&params, MetricKind::Cos)).map_err(vector_err)?;
        Self::with_index(params, index, 0, HashMap::new())
    }

    /// Where the norms of the index saved at `path` are kept.
    fn norms_path(path: &Path) -> PathBuf {
        path.with_extension("norms")
    }

    /// Loads an index saved by [`VectorIndex::save`].
    pub fn load(params: VectorParams, path: &Path) -> Result<Self> {
        let path_str = path.to_string_lossy();
        let meta = Index::metadata(&path_str).map_err(vector_err)?;
        if meta.dimensions as usize != params.dimension {
            return Err(Error::Corrupt {
                path: path.to_path_buf(),
                message: format!(
                    "vector index has {} dimensions, the schema says {}",
                    meta.dimensions, params.dimension
                ),
            });
        }
        // The metric the file was built with decides how its vectors are held.
        let compatible = match params.distance {
            Distance::Cosine => matches!(meta.metric, MetricKind::Cos | MetricKind::IP),
            Distance::Dot => meta.metric == MetricKind::IP,
            Distance::L2 => meta.metric == MetricKind::L2sq,
        };
        if !compatible {
            return Err(Error::Corrupt {
                path: path.to_path_buf(),
                message: format!(
                    "vector index was built for another distance than the schema's {:?}",
                    params.distance
                ),
            });
        }
        let index = Index::new(&options(&params, meta.metric)).map_err(vector_err)?;
        index.load(&path_str).map_err(vector_err)?;
        index.change_expansion_search(params.ef_search);
        let slots = (meta.count_present + meta.count_deleted) as usize;
        // A checkpoint from before norms were kept has none: its shard keeps the vectors as
        // written in the text index (`_rawvec`).
        let norms_path = Self::norms_path(path);
        let norms = match std::fs::read(&norms_path) {
            Ok(bytes) => postcard::from_bytes::<Vec<(u64, f64)>>(&bytes)
                .map_err(|e| Error::Corrupt {
                    path: norms_path.clone(),
                    message: format!("unreadable vector norms: {e}"),
                })?
                .into_iter()
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => return Err(Error::io(&norms_path, e)),
        };
        Self::with_index(params, index, slots, norms)
    }

    /// Writes the whole index to `path` (and a normalizing index's norms beside it), synced
    /// to disk. usearch writes through a C `FILE*` and ignores the result of `fclose`, so a
    /// disk that fills during the last flush would leave a short file reported as saved: the
    /// file's length is checked against the serialized size.
    pub fn save(&self, path: &Path) -> Result<()> {
        let _shared = self.structure.read();
        self.index
            .save(&path.to_string_lossy())
            .map_err(vector_err)?;
        let expected = self.index.serialized_length() as u64;
        let written = std::fs::metadata(path)
            .map_err(|e| Error::io(path, e))?
            .len();
        if written != expected {
            return Err(Error::io(
                path,
                std::io::Error::new(
                    std::io::ErrorKind::StorageFull,
                    format!("the vector index file is {written} bytes, {expected} expected: the disk filled during the save"),
                ),
            ));
        }
        sync_file(path)?;
        if self.normalize {
            let norms: Vec<(u64, f64)> = self.norms.read().iter().map(|(k, n)| (*k, *n)).collect();
            let bytes = postcard::to_stdvec(&norms).expect("norms serialize");
            let norms_path = Self::norms_path(path);
            std::fs::write(&norms_path, bytes).map_err(|e| Error::io(&norms_path, e))?;
            sync_file(&norms_path)?;
        }
        Ok(())
    }

    pub fn params(&self) -> &VectorParams {
        &self.params
    }

    /// Number of live vectors.
    pub fn len(&self) -> usize {
        self.index.size()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds a vector under `key`, growing the graph's capacity as needed. Safe to call from
    /// several threads at once.
    pub fn add(&self, key: u64, vector: &[f32]) -> Result<()> {
        let needed = self.slots.fetch_add(1, Ordering::Relaxed) + 1;
        let full = needed > {
            let _shared = self.structure.read();
            self.index.capacity()
        };
        if full {
            let _exclusive = self.structure.write();
            let capacity = self.index.capacity();
            if needed > capacity {
                self.index
                    .reserve_capacity_and_threads(
                        (capacity * 2).max(needed).max(1024),
                        self.context_count,
                    )
                    .map_err(vector_err)?;
            }
        }
        let (vector, norm) = self.prepared(vector);
        let _shared = self.structure.read();
        let _context = self.contexts.acquire();
        self.index.add(key, &vector).map_err(vector_err)?;
        if self.normalize {
            self.norms.write().insert(key, norm);
        }
        Ok(())
    }

    /// Whether this index holds a cosine field's vectors unit-normalized.
    pub fn normalizes(&self) -> bool {
        self.normalize
    }

    /// `vector` as this index holds and searches it, and the norm it was divided by. A zero
    /// vector stays as it is.
    fn prepared<'a>(&self, vector: &'a [f32]) -> (std::borrow::Cow<'a, [f32]>, f64) {
        if !self.normalize {
            return (std::borrow::Cow::Borrowed(vector), 1.0);
        }
        // In f64: an f32 sum of squares overflows from components near 2e19 and underflows
        // below 1e-19, either of which would leave a vector unnormalized.
        let norm = vector
            .iter()
            .map(|&x| f64::from(x) * f64::from(x))
            .sum::<f64>()
            .sqrt();
        if norm == 0.0 || !norm.is_finite() || norm == 1.0 {
            return (std::borrow::Cow::Borrowed(vector), 1.0);
        }
        let unit = vector
            .iter()
            .map(|&x| (f64::from(x) / norm) as f32)
            .collect();
        (std::borrow::Cow::Owned(unit), norm)
    }

    /// Tombstones `keys`; missing keys are not an error.
    pub fn remove_many(&self, keys: &[u64]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let _exclusive = self.structure.write();
        let mut norms = self.norms.write();
        for &key in keys {
            // usearch reuses a removed slot for a later add, so it no longer counts as used.
            let removed = self.index.remove(key).map_err(vector_err)?;
            self.slots.fetch_sub(removed, Ordering::Relaxed);
            norms.remove(&key);
        }
        Ok(())
    }

    /// Tombstones `key`; a missing key is not an error.
    pub fn remove(&self, key: u64) -> Result<()> {
        self.remove_many(&[key])
    }

    /// The vector of `key` as written. A normalizing index multiplies the unit vector back
    /// by its norm in f64, which gives each component within one unit in the last place of
    /// the written f32 (about 88% exactly): no exact copy is kept, as no unit vector can
    /// multiply back exactly for every component. A vector from a checkpoint that kept no
    /// norms comes back unit-normalized.
    pub fn get(&self, key: u64) -> Option<Vec<f32>> {
        let _shared = self.structure.read();
        let mut vector = self.get_unlocked(key)?;
        if self.normalize {
            if let Some(&norm) = self.norms.read().get(&key) {
                for x in &mut vector {
                    *x = (f64::from(*x) * norm) as f32;
                }
            }
        }
        Some(vector)
    }

    /// Whether the index knows the norm of `key`'s vector (always, for an index that does
    /// not normalize).
    pub fn has_written_form(&self, key: u64) -> bool {
        !self.normalize || self.norms.read().contains_key(&key)
    }

    fn get_unlocked(&self, key: u64) -> Option<Vec<f32>> {
        let mut out = vec![0f32; self.params.dimension];
        match self.index.get(key, &mut out) {
            Ok(n) if n > 0 => Some(out),
            _ => None,
        }
    }

    /// Sets the search-time candidate list size.
    pub fn set_ef_search(&self, ef: usize) {
        self.index.change_expansion_search(ef);
    }

    /// Approximate k nearest neighbours among keys accepted by `allow`, best first, as
    /// (key, distance).
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        allow: impl Fn(u64) -> bool,
    ) -> Result<Vec<(u64, f32)>> {
        let mut found = self.candidates(query, k, allow)?;
        found.truncate(k);
        Ok(found)
    }

    /// The approximate k nearest neighbours among keys accepted by `allow`, and the allowed
    /// neighbours of the walk's over-fetch beyond them, best first, as (key, distance). A
    /// caller that ranks ties its own way (by id hash, see `crate::rank`) cuts this at `k`
    /// after sorting, so that of several vectors tied at the k-th distance the walk found, its
    /// rule picks which stay.
    ///
    /// Most searches allow nearly every key (only replaced or unrefreshed versions are
    /// excluded), so the plain graph walk runs first and the allowed hits are kept; usearch's
    /// filtered walk, which calls back into Rust for every candidate, runs only when the plain
    /// walk cannot fill `k`.
    pub(crate) fn candidates(
        &self,
        query: &[f32],
        k: usize,
        allow: impl Fn(u64) -> bool,
    ) -> Result<Vec<(u64, f32)>> {
        let _shared = self.structure.read();
        if k == 0 || self.is_empty() {
            return Ok(Vec::new());
        }
        let _context = self.contexts.acquire();
        let (query, _) = self.prepared(query);
        let query = query.as_ref();
        let fetch = k + k / 4 + 4;
        let plain = self.index.search(query, fetch).map_err(vector_err)?;
        let exhausted = plain.keys.len() < fetch;
        let kept: Vec<(u64, f32)> = plain
            .keys
            .into_iter()
            .zip(plain.distances)
            .filter(|(key, _)| allow(*key))
            .collect();
        if kept.len() >= k || exhausted {
            return Ok(kept);
        }
        let matches = self
            .index
            .filtered_search(query, k, allow)
            .map_err(vector_err)?;
        Ok(matches.keys.into_iter().zip(matches.distances).collect())
    }

    /// Exact distances from `query` to each of `keys` (those present), the top `k` as
    /// (key, distance). `keys` come with a tie-break value each (the document's id hash): the
    /// top is ranked as results rank, by [`similarity`] descending, then the tie-break value
    /// ascending, so that of vectors tied at the k-th similarity the same ones make the cut
    /// on every shard layout. Used when a filter leaves so few candidates that a graph walk
    /// would miss them.
    pub fn exact_search(
        &self,
        query: &[f32],
        k: usize,
        keys: impl Iterator<Item = (u64, u64)>,
    ) -> Vec<(u64, f32)> {
        let _shared = self.structure.read();
        let kind = self.params.distance;
        let (query, _) = self.prepared(query);
        let mut scored: Vec<(u64, f32, f32, u64)> = keys
            .filter_map(|(key, tie)| {
                self.get_unlocked(key).map(|v| {
                    let d = self.graph_distance(&query, &v);
                    (key, d, similarity(kind, d), tie)
                })
            })
            .collect();
        scored.sort_by(|a, b| crate::rank::best_first((a.2, a.3), (b.2, b.3)).then(a.0.cmp(&b.0)));
        scored.truncate(k);
        scored.into_iter().map(|(key, d, _, _)| (key, d)).collect()
    }

    /// The distance the graph computes between a prepared query and a vector as the index
    /// holds it, so that an exact search scores exactly as the graph walk.
    fn graph_distance(&self, query: &[f32], held: &[f32]) -> f32 {
        match self.index.metric_kind() {
            MetricKind::IP => 1.0 - kernel::dot()(query, held),
            MetricKind::L2sq => kernel::l2_squared()(query, held),
            _ => distance(self.params.distance, query, held),
        }
    }
}

fn sync_file(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(path, e))
}

/// The largest squared Euclidean length a vector of a `dot` or `l2` field may have.
///
/// By Cauchy–Schwarz, any two such vectors have `|a·b| ≤ ‖a‖‖b‖ ≤ B` and
/// `‖a−b‖² ≤ (‖a‖ + ‖b‖)² ≤ 4B`, and so does every partial sum a kernel accumulates (a sum
/// over some of the components, in any order or lane split): with `B = 1e37` no f32 sum
/// exceeds 4e37, under an eighth of `f32::MAX` (3.4e38), which leaves room for rounding. A
/// dot product is then a finite score, and `1 / (1 + d²)` a finite positive one.
pub const MAX_SQUARED_NORM: f64 = 1e37;

/// Whether `values` may be written to, or searched in, a field of `distance`: every component
/// finite and, so that every score it takes part in is a finite 32-bit float,
/// - `dot`, `l2`: a squared length (summed in f64) of at most [`MAX_SQUARED_NORM`];
/// - `cosine`: not all zeros (a zero vector has no direction). Any other length is fine:
///   cosine vectors are normalized in f64 before an f32 kernel sees them.
///
/// The message says why a vector is refused; a caller adds the field's name.
pub fn check_vector_magnitude(
    values: &[f32],
    distance: Distance,
) -> std::result::Result<(), String> {
    if let Some(i) = values.iter().position(|x| !x.is_finite()) {
        return Err(format!("element {i} is not a finite 32-bit float"));
    }
    let squared: f64 = values.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
    match distance {
        Distance::Cosine if squared == 0.0 => {
            Err("a zero vector has no cosine distance to anything".into())
        }
        Distance::Dot | Distance::L2 if squared > MAX_SQUARED_NORM => Err(format!(
            "the vector's squared length is {squared:.3e}, over the {MAX_SQUARED_NORM:e} a {} field takes so that every score stays a finite 32-bit float; scale it down",
            match distance {
                Distance::Dot => "dot",
                _ => "l2",
            }
        )),
        _ => Ok(()),
    }
}

/// Distance as usearch defines it: cosine `1 - cos`, dot `1 - a·b`, l2 squared Euclidean.
/// Cosine sums in f64, as usearch's own cosine kernel does, so that no length overflows or
/// underflows the norms.
pub fn distance(kind: Distance, a: &[f32], b: &[f32]) -> f32 {
    match kind {
        Distance::Cosine => {
            let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
            for (&x, &y) in a.iter().zip(b) {
                let (x, y) = (f64::from(x), f64::from(y));
                dot += x * y;
                na += x * x;
                nb += y * y;
            }
            if na == 0.0 || nb == 0.0 {
                1.0
            } else {
                (1.0 - dot / (na.sqrt() * nb.sqrt())) as f32
            }
        }
        Distance::Dot => 1.0 - a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>(),
        Distance::L2 => a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum(),
    }
}

/// Turns a distance into a score where higher is better: cosine similarity, dot product, or
/// `1 / (1 + l2²)` as Elasticsearch does.
///
/// Vectors are checked by [`check_vector_magnitude`] before they are written or searched, so
/// the score is finite. A vector logged before that check existed could still overflow; its
/// score is then held to the finite range (an overflowed dot product to ±`f32::MAX`, a NaN
/// to the worst score), so that no answer ever carries a non-finite score.
pub fn similarity(kind: Distance, distance: f32) -> f32 {
    let score = match kind {
        Distance::Cosine | Distance::Dot => 1.0 - distance,
        Distance::L2 => 1.0 / (1.0 + distance),
    };
    if score.is_nan() {
        f32::MIN
    } else {
        score.clamp(f32::MIN, f32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(distance: Distance) -> VectorParams {
        VectorParams {
            dimension: 4,
            distance,
            m: 16,
            ef_construction: 64,
            ef_search: 64,
        }
    }

    #[test]
    fn nearest_neighbour_respects_filter_and_removal() {
        let idx = VectorIndex::new(params(Distance::L2)).unwrap();
        for i in 0..2000u64 {
            let x = i as f32;
            idx.add(i, &[x, 0.0, 0.0, 1.0]).unwrap();
        }
        let hits = idx.search(&[10.2, 0.0, 0.0, 1.0], 3, |_| true).unwrap();
        assert_eq!(
            hits.iter().map(|h| h.0).collect::<Vec<_>>(),
            vec![10, 11, 9]
        );
        idx.remove(10).unwrap();
        let hits = idx
            .search(&[10.2, 0.0, 0.0, 1.0], 3, |k| k % 2 == 1)
            .unwrap();
        assert_eq!(
            hits.iter().map(|h| h.0).collect::<Vec<_>>(),
            vec![11, 9, 13]
        );
        assert_eq!(idx.get(10), None);
        assert_eq!(idx.get(11), Some(vec![11.0, 0.0, 0.0, 1.0]));
    }

    #[test]
    fn cosine_fields_search_unit_vectors_with_inner_product() {
        let idx = VectorIndex::new(params(Distance::Cosine)).unwrap();
        assert!(idx.normalizes());
        idx.add(1, &[3.0, 4.0, 0.0, 0.0]).unwrap();
        idx.add(2, &[0.0, 0.0, 5.0, 0.0]).unwrap();
        idx.add(3, &[0.0, 0.0, 0.0, 0.0]).unwrap();
        let hits = idx.search(&[6.0, 8.0, 0.0, 0.0], 3, |_| true).unwrap();
        assert_eq!(hits[0].0, 1);
        assert!(
            hits[0].1.abs() < 1e-6,
            "same direction: distance 0, {hits:?}"
        );
        assert!(
            (hits[1].1 - 1.0).abs() < 1e-6,
            "orthogonal: distance 1, {hits:?}"
        );
        // The exact path gives the graph's distances.
        let exact = idx.exact_search(&[6.0, 8.0, 0.0, 0.0], 2, [(1, 1), (2, 2)].into_iter());
        assert_eq!(exact[0].0, 1);
        assert!((exact[0].1 - hits[0].1).abs() < 1e-6);
        // GET gives what was written: the unit vector times its norm.
        assert_eq!(idx.get(1), Some(vec![3.0, 4.0, 0.0, 0.0]));
        // Saved and loaded, it still normalizes and still knows the norms.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ip.usearch");
        idx.save(&path).unwrap();
        let back = VectorIndex::load(params(Distance::Cosine), &path).unwrap();
        assert!(back.normalizes());
        assert_eq!(back.get(1), Some(vec![3.0, 4.0, 0.0, 0.0]));
        assert_eq!(back.get(2), Some(vec![0.0, 0.0, 5.0, 0.0]));
        back.add(4, &[0.0, 2.0, 0.0, 0.0]).unwrap();
        assert_eq!(back.get(4), Some(vec![0.0, 2.0, 0.0, 0.0]));
        back.remove(4).unwrap();
        assert!(!back.has_written_form(4));
        // A checkpoint saved before norms were kept loads with none: unit vectors come back.
        std::fs::remove_file(dir.path().join("ip.norms")).unwrap();
        let without = VectorIndex::load(params(Distance::Cosine), &path).unwrap();
        assert!(!without.has_written_form(1));
        assert_eq!(without.get(1), Some(vec![0.6, 0.8, 0.0, 0.0]));
    }

    #[test]
    fn cosine_vectors_come_back_within_one_ulp_of_what_was_written() {
        let dimension = 384;
        let idx = VectorIndex::new(VectorParams {
            dimension,
            ..params(Distance::Cosine)
        })
        .unwrap();
        // Deterministic pseudo-random components over several magnitudes.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        };
        let written: Vec<Vec<f32>> = (0..200)
            .map(|i| {
                let scale = 10f64.powi(i % 7 - 3);
                (0..dimension).map(|_| (next() * scale) as f32).collect()
            })
            .collect();
        for (key, v) in written.iter().enumerate() {
            idx.add(key as u64, v).unwrap();
        }
        let (mut equal, mut total) = (0, 0);
        for (key, v) in written.iter().enumerate() {
            let back = idx.get(key as u64).unwrap();
            for (a, b) in v.iter().zip(&back) {
                let ulps = (a.to_bits() as i64 - b.to_bits() as i64).abs();
                assert!(ulps <= 1, "{a} came back as {b}");
                equal += usize::from(ulps == 0);
                total += 1;
            }
        }
        assert!(
            equal * 100 >= total * 85,
            "{equal} of {total} components came back exactly"
        );
    }

    #[test]
    fn huge_and_tiny_cosine_vectors_are_normalized_too() {
        let idx = VectorIndex::new(params(Distance::Cosine)).unwrap();
        idx.add(1, &[1e20, 0.0, 0.0, 0.0]).unwrap();
        idx.add(2, &[0.0, 1e-25, 0.0, 0.0]).unwrap();
        idx.add(3, &[0.7, 0.7, 0.0, 0.0]).unwrap();
        let along_x = idx.search(&[1.0, 0.0, 0.0, 0.0], 3, |_| true).unwrap();
        assert_eq!(along_x[0].0, 1);
        assert!(along_x[0].1.abs() < 1e-6, "{along_x:?}");
        let along_y = idx.search(&[0.0, 3e30, 0.0, 0.0], 3, |_| true).unwrap();
        assert_eq!(along_y[0].0, 2);
        assert!(along_y[0].1.abs() < 1e-6, "{along_y:?}");
        assert!(along_y
            .iter()
            .all(|(_, d)| (-1e-6..=1.0 + 1e-6).contains(d)));
    }

    #[test]
    fn a_cosine_index_of_usearchs_cosine_metric_keeps_vectors_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.usearch");
        let cosine = params(Distance::Cosine);
        let old = VectorIndex::new_with_cosine_metric(cosine).unwrap();
        assert!(!old.normalizes());
        old.add(1, &[3.0, 4.0, 0.0, 0.0]).unwrap();
        old.add(2, &[0.0, 0.0, 5.0, 0.0]).unwrap();
        old.save(&path).unwrap();
        let back = VectorIndex::load(cosine, &path).unwrap();
        assert!(!back.normalizes());
        back.add(3, &[0.0, 10.0, 0.0, 0.0]).unwrap();
        assert_eq!(back.get(3), Some(vec![0.0, 10.0, 0.0, 0.0]));
        let hits = back.search(&[6.0, 8.0, 0.0, 0.0], 3, |_| true).unwrap();
        assert_eq!(hits.iter().map(|h| h.0).collect::<Vec<_>>(), vec![1, 3, 2]);
        assert!((hits[1].1 - 0.2).abs() < 1e-5, "cos = 0.8: {hits:?}");
        // A file of another distance is refused.
        let l2 = dir.path().join("l2.usearch");
        let other = VectorIndex::new(params(Distance::L2)).unwrap();
        other.add(1, &[1.0, 0.0, 0.0, 0.0]).unwrap();
        other.save(&l2).unwrap();
        let refused = VectorIndex::load(cosine, &l2).err().expect("refused");
        assert_eq!(refused.code(), "corrupt_data");
    }

    #[test]
    fn save_and_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.usearch");
        let idx = VectorIndex::new(params(Distance::Cosine)).unwrap();
        for i in 0..100u64 {
            idx.add(i, &[1.0, i as f32, 0.5, 0.0]).unwrap();
        }
        idx.remove(5).unwrap();
        idx.save(&path).unwrap();
        let back = VectorIndex::load(params(Distance::Cosine), &path).unwrap();
        assert_eq!(back.len(), 99);
        assert_eq!(back.get(7), idx.get(7));
        back.add(1000, &[0.0, 0.0, 1.0, 0.0]).unwrap();
        assert_eq!(
            back.search(&[0.0, 0.0, 1.0, 0.0], 1, |_| true).unwrap()[0].0,
            1000
        );
    }

    #[test]
    fn exact_distances_match_the_graph() {
        let idx = VectorIndex::new(params(Distance::Cosine)).unwrap();
        let vs: Vec<[f32; 4]> = (0..50)
            .map(|i| [1.0, (i as f32).sin(), (i as f32).cos(), 0.3])
            .collect();
        for (i, v) in vs.iter().enumerate() {
            idx.add(i as u64, v).unwrap();
        }
        let q = [0.2, 0.9, -0.1, 0.4];
        let exact = idx.exact_search(&q, 5, (0..50).map(|k| (k, k)));
        let approx = idx.search(&q, 5, |_| true).unwrap();
        assert_eq!(
            exact.iter().map(|h| h.0).collect::<Vec<_>>(),
            approx.iter().map(|h| h.0).collect::<Vec<_>>()
        );
        // The same kernel on the same prepared query: the same bits.
        for (e, a) in exact.iter().zip(&approx) {
            assert_eq!(e.1, a.1);
        }
    }

    /// A random finite f32 vector: components of one magnitude or of mixed ones, from
    /// subnormal to `f32::MAX`, with zeros now and then.
    fn random_vector(rng: &mut impl rand::Rng, dimension: usize) -> Vec<f32> {
        let scale = rng.gen_range(-45i32..=38);
        let mixed = rng.gen_bool(0.3);
        (0..dimension)
            .map(|_| {
                if rng.gen_bool(0.1) {
                    return 0.0;
                }
                let exponent = if mixed {
                    rng.gen_range(-45i32..=38)
                } else {
                    scale
                };
                let x = rng.gen_range(-10.0f64..10.0) * 10f64.powi(exponent);
                let x = x.clamp(-f64::from(f32::MAX), f64::from(f32::MAX)) as f32;
                if x.is_finite() {
                    x
                } else {
                    0.0
                }
            })
            .collect()
    }

    /// Property: in every metric, a random finite vector is either refused by
    /// [`check_vector_magnitude`], or scores finitely against every accepted vector: through
    /// each kernel this CPU runs, the reference [`distance`], and an index's graph walk and
    /// exact search.
    #[test]
    fn accepted_vectors_always_score_finitely() {
        use rand::SeedableRng;
        let seed = crate::schema::tests::property_seed("accepted_vectors_always_score_finitely");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let (mut accepted_total, mut refused_total, mut large) = (0, 0, 0);
        for round in 0..24 {
            let dimension = [1, 2, 3, 7, 8, 16, 17, 33, 64, 100][round % 10];
            for distance in [Distance::Cosine, Distance::Dot, Distance::L2] {
                let mut accepted: Vec<Vec<f32>> = Vec::new();
                for _ in 0..60 {
                    let v = random_vector(&mut rng, dimension);
                    match check_vector_magnitude(&v, distance) {
                        Ok(()) => accepted.push(v),
                        Err(why) => {
                            assert!(!why.is_empty());
                            refused_total += 1;
                        }
                    }
                }
                // Vectors right at the bound, pointing both ways: the worst pairs.
                if distance != Distance::Cosine {
                    let x = ((MAX_SQUARED_NORM / dimension as f64).sqrt() * 0.999_999) as f32;
                    accepted.push(vec![x; dimension]);
                    accepted.push(vec![-x; dimension]);
                }
                for v in &accepted {
                    check_vector_magnitude(v, distance).unwrap();
                    let norm2: f64 = v.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
                    large += usize::from(norm2 > 1e30);
                }
                accepted_total += accepted.len();
                let params = VectorParams {
                    dimension,
                    distance,
                    m: 16,
                    ef_construction: 64,
                    ef_search: 64,
                };
                let index = VectorIndex::new(params).unwrap();
                for (key, v) in accepted.iter().enumerate() {
                    index.add(key as u64, v).unwrap();
                }
                let kernels: [(kernel::Kernel, kernel::Kernel); 2] = [
                    (kernel::dot(), kernel::l2_squared()),
                    (kernel::dot_portable, kernel::l2_portable),
                ];
                for (qi, q) in accepted.iter().enumerate() {
                    for v in &accepted {
                        for (dot, l2) in kernels {
                            let d = match distance {
                                Distance::Dot => 1.0 - dot(q, v),
                                Distance::L2 => l2(q, v),
                                Distance::Cosine => distance_of_unit(dot, q, v),
                            };
                            let score = similarity(distance, d);
                            assert!(
                                d.is_finite() && score.is_finite(),
                                "{distance:?}: {q:?} against {v:?} gives distance {d}"
                            );
                        }
                        let d = super::distance(distance, q, v);
                        assert!(d.is_finite(), "{distance:?} reference: {q:?} / {v:?}: {d}");
                    }
                    let walked = index.search(q, accepted.len(), |_| true).unwrap();
                    let exact = index.exact_search(
                        q,
                        accepted.len(),
                        (0..accepted.len() as u64).map(|k| (k, k)),
                    );
                    assert_eq!(exact.len(), accepted.len());
                    for (key, d) in walked.iter().chain(&exact) {
                        assert!(
                            d.is_finite() && similarity(distance, *d).is_finite(),
                            "{distance:?}: query {qi} {q:?} against {key}: distance {d}"
                        );
                    }
                }
            }
        }
        // Both sides of the property were exercised, large accepted vectors included.
        assert!(accepted_total > 1000, "{accepted_total} accepted");
        assert!(refused_total > 500, "{refused_total} refused");
        assert!(
            large > 100,
            "{large} accepted vectors of squared length over 1e30"
        );
    }

    /// The cosine distance a normalizing index computes: both vectors unit-normalized in f64,
    /// then an f32 kernel.
    fn distance_of_unit(dot: kernel::Kernel, a: &[f32], b: &[f32]) -> f32 {
        let unit = |v: &[f32]| -> Vec<f32> {
            let norm = v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
            v.iter().map(|&x| (f64::from(x) / norm) as f32).collect()
        };
        1.0 - dot(&unit(a), &unit(b))
    }

    #[test]
    fn overflowing_vectors_are_refused_with_the_reason() {
        // Each component is a finite f32, but 8 · (1e19)² = 8e38 overflows f32 as a dot
        // product with itself.
        let huge = vec![1e19f32; 8];
        assert!(!(kernel::dot()(&huge, &huge)).is_finite());
        for distance in [Distance::Dot, Distance::L2] {
            let why = check_vector_magnitude(&huge, distance).unwrap_err();
            assert!(
                why.contains("squared length") && why.contains("1e37"),
                "{why}"
            );
        }
        // Cosine normalizes first: a huge vector is fine, a zero one is not.
        check_vector_magnitude(&huge, Distance::Cosine).unwrap();
        let why = check_vector_magnitude(&[0.0; 8], Distance::Cosine).unwrap_err();
        assert!(why.contains("zero vector"), "{why}");
        // Subnormal components: tiny, not zero.
        check_vector_magnitude(&[1e-45, 0.0], Distance::Cosine).unwrap();
        assert!(check_vector_magnitude(&[f32::NAN], Distance::L2).is_err());
        // A score computed from an overflowed distance (data logged before the check) is
        // still finite.
        for distance in [Distance::Cosine, Distance::Dot, Distance::L2] {
            for d in [f32::INFINITY, f32::NEG_INFINITY, f32::NAN] {
                assert!(similarity(distance, d).is_finite(), "{distance:?} {d}");
            }
        }
    }
}
